"""hypothesis strategies for hostile client input: JSON bodies, query strings and path names.

Bodies are mostly well formed (a known model, message-, tool- and part-shaped objects of every
dialect the gateway speaks) with hostile values at any depth: lone UTF-16 surrogates, numbers no
float can hold, `NaN`/`Infinity` literals, integers of thousands of digits, deep nesting, wrong
types. Needs the `test` extra (hypothesis); only tests import this module.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

__all__ = ["Raw", "body_bytes", "encode", "path_names", "query_strings"]


class Raw(str):
    """JSON text inserted as it is (what `json.dumps` cannot produce: `1e400`, `NaN`, ...)."""


def encode(value: Any) -> bytes:
    """JSON bytes for `value`; `Raw` parts verbatim, lone surrogates as `\\udXXX` escapes."""
    return _text(value).encode()


def _text(value: Any) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{_text(str(k))}:{_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_text(v) for v in value) + "]"
    if isinstance(value, float) and value != value:
        return "NaN"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    return json.dumps(value)  # ensure_ascii: a lone surrogate becomes its \\u escape


# ------------------------------------------------------------------ scalars

_NASTY_TEXT = ["\ud800", "a\udfffb", "\udbff\ud800", "\x00", "\u202e\u0000", "\ufeff", "\U0001d518",
               "%ff", "../../../../etc/passwd", "/etc/passwd", "C:\\\\x", "a" * 70_000,
               "\r\nX-Injected: 1", "{{ .Prompt }}", "data:image/png;base64,", "data:,x",
               "iVBORw0KGgo=", "call_0", "function", "json", "json_object", "json_schema",
               "text", "image_url", "tool", "user", "assistant", "system", "developer",
               "base64", "float", "low", "high", "true", "1", "-1", "1e400", "NaN"]
_NASTY_NUMBERS = [Raw("1e400"), Raw("-1e400"), Raw("1e-400"), Raw("-0"), Raw("9" * 5000),
                  Raw("-" + "9" * 4300), Raw("1" + "0" * 4299), Raw("NaN"), Raw("Infinity"),
                  Raw("-Infinity"), 2**63, -(2**63) - 1, 2**64, 10**300, 0, -1, 1]

texts = st.one_of(st.text(max_size=20), st.sampled_from(_NASTY_TEXT))
numbers = st.one_of(st.integers(), st.floats(), st.sampled_from(_NASTY_NUMBERS))
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
deep = st.sampled_from([100, 1000, 100_000]).map(lambda n: Raw("[" * n + "]" * n))
deep_objects = st.sampled_from([100, 1000, 50_000]).map(
    lambda n: Raw('{"a":' * n + "1" + "}" * n))

# Field names of every dialect the gateway speaks (Ollama, OpenAI chat/completions/responses,
# Anthropic messages) and of model management, so random objects hit the fields code reads.
KEYS = ["model", "name", "messages", "prompt", "input", "system", "instructions", "stream",
        "options", "format", "tools", "tool_choice", "tool_calls", "images", "content", "role",
        "type", "text", "image_url", "url", "source", "data", "media_type", "function",
        "arguments", "parameters", "response_format", "json_schema", "schema", "strict",
        "stream_options", "include_usage", "n", "max_tokens", "max_completion_tokens",
        "max_output_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stop_sequences",
        "suffix", "raw", "template", "context", "keep_alive", "think", "thinking", "truncate",
        "dimensions", "encoding_format", "id", "index", "call_id", "tool_call_id", "tool_use_id",
        "tool_name", "output", "input_schema", "reasoning", "effort", "budget_tokens", "echo",
        "logprobs", "top_logprobs", "metadata", "user", "verbose", "num_ctx", "num_predict",
        "nodes", "source", "destination", "insecure", "from", "files", "adapters", "quantize",
        "license", "modelfile", "previous_response_id", "store", "text", "detail"]
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=8))


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, picked in proportion to its weight (`one_of` merges duplicates,
    so repeating a branch there does not weigh it)."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(table) - 1).flatmap(lambda index: table[index])


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.lists(children, max_size=4),
                     st.dictionaries(keys, children, max_size=5))


_values = st.recursive(scalars, _containers, max_leaves=12)
anything = weighted((12, _values), (1, deep), (1, deep_objects))


def _obj(required: dict[str, Any], optional: dict[str, Any]) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries(required, optional=optional)


roles = st.sampled_from(["system", "user", "assistant", "tool", "developer", "function"])
base64_images = st.sampled_from(["iVBORw0KGgo=", "/9j/4AAQ", "R0lGODlh", "not base64!", ""])
function_ = _obj({"name": texts}, {"description": texts, "arguments": st.one_of(
    texts, st.dictionaries(keys, scalars, max_size=3)), "parameters": anything})
tool_call = _obj({"function": function_}, {"id": texts, "type": st.just("function"),
                                           "index": st.integers(-2, 3)})
tool = _obj({"type": st.sampled_from(["function", "custom", "web_search"])},
            {"function": function_, "name": texts, "input_schema": anything,
             "parameters": anything, "description": texts})
image_url = st.one_of(base64_images.map(lambda b: "data:image/png;base64," + b), texts,
                      _obj({"url": texts}, {"detail": texts}))
part = _obj({"type": st.sampled_from(["text", "image_url", "image", "input_text",
                                      "input_image", "output_text", "tool_use", "tool_result",
                                      "input_audio", "refusal"])},
            {"text": texts, "image_url": image_url, "source": _obj(
                {"type": st.sampled_from(["base64", "url"])},
                {"media_type": texts, "data": base64_images, "url": texts}),
             "id": texts, "name": texts, "input": anything, "tool_use_id": texts,
             "content": st.one_of(texts, st.lists(anything, max_size=2))})
content = st.one_of(texts, st.lists(part, max_size=3), st.none())
message = _obj({"role": roles, "content": content},
               {"images": st.lists(base64_images, max_size=2), "tool_calls":
                st.lists(tool_call, max_size=2), "thinking": texts, "tool_name": texts,
                "name": texts, "tool_call_id": texts, "type": st.sampled_from(
                    ["message", "function_call", "function_call_output"]),
                "call_id": texts, "arguments": texts, "output": texts})
small_ints = st.integers(0, 64)
fractions = st.floats(0, 2)
options = _obj({}, {"temperature": fractions, "top_p": fractions, "top_k": small_ints,
                    "seed": small_ints, "num_ctx": st.sampled_from([512, 2048, 8192]),
                    "num_predict": small_ints, "repeat_penalty": fractions,
                    "stop": st.lists(texts, max_size=2)})
response_format = _obj({"type": st.sampled_from(["json_object", "json_schema", "text"])},
                       {"json_schema": _obj({"schema": anything}, {"name": texts,
                                                                   "strict": st.booleans()})})
# Well-formed values of every field; the hostile parts come from `mutated`.
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "messages": st.lists(message, max_size=3), "prompt": st.one_of(texts, st.lists(texts)),
    "input": st.one_of(texts, texts, st.lists(texts, max_size=3), st.lists(message, max_size=2)),
    "system": st.one_of(texts, texts, st.lists(part, max_size=2)), "instructions": texts,
    "stream": st.booleans(), "options": options, "format": st.one_of(
        st.just("json"), st.dictionaries(keys, anything, max_size=3)),
    "tools": st.lists(tool, max_size=2), "tool_choice": st.sampled_from(
        ["auto", "none", "required", {"type": "function", "function": {"name": "f"}}]),
    "images": st.lists(base64_images, max_size=2), "response_format": response_format,
    "stream_options": _obj({}, {"include_usage": st.booleans()}), "n": st.just(1),
    "max_tokens": small_ints, "max_completion_tokens": small_ints,
    "max_output_tokens": small_ints, "temperature": fractions, "top_p": fractions,
    "seed": small_ints, "stop": st.one_of(texts, st.lists(texts, max_size=2)),
    "stop_sequences": st.lists(texts, max_size=2), "suffix": texts, "raw": st.booleans(),
    "think": st.one_of(st.booleans(), st.sampled_from(["low", "high"])),
    "thinking": _obj({"type": st.sampled_from(["enabled", "disabled"])},
                     {"budget_tokens": small_ints}),
    "keep_alive": st.sampled_from(["5m", 0, -1, "0s"]), "dimensions": small_ints,
    "encoding_format": st.sampled_from(["float", "base64"]),
    "context": st.lists(small_ints, max_size=3), "name": texts, "source": texts,
    "destination": texts, "nodes": st.lists(texts, max_size=2), "insecure": st.booleans(),
    "from": texts, "files": st.dictionaries(texts, texts, max_size=2),
    "reasoning": _obj({}, {"effort": st.sampled_from(["low", "high"])}),
    "metadata": st.dictionaries(texts, texts, max_size=2), "verbose": st.booleans(),
}


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in `value` a mutation may replace (each key and index, at any depth)."""
    found = [prefix]
    if isinstance(value, dict) and not isinstance(value, Raw):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replace(value[head], rest, new)}
    copy = list(value)
    copy[head] = _replace(copy[head], rest, new)
    return copy


@st.composite
def mutated(draw: st.DrawFn, proper: st.SearchStrategy[Any]) -> Any:
    """A well-formed value with up to three parts replaced by anything (or a key added):
    most of the request passes the checks, so the hostile part reaches deep code."""
    value = draw(proper)
    for _ in range(draw(st.integers(0, 3))):
        paths = _paths(value)
        path = draw(st.sampled_from(paths[1:] or paths))  # the whole body: see body_bytes
        target = value
        for step in path:
            target = target[step]
        if isinstance(target, dict) and draw(st.booleans()):
            path = (*path, draw(keys))  # a new field, possibly one the code knows
            value = _replace(value, path[:-1], {**target, path[-1]: None})
        value = _replace(value, path, draw(anything))
    return value


def body_bytes(models: list[str]) -> st.SearchStrategy[bytes]:
    """A request body: mostly an object with a known model and dialect-shaped fields."""
    model = weighted((6, st.sampled_from(models)), (1, texts))
    # The fields most endpoints require are always there (others ignore what they do not know).
    required = {"model": model, "messages": FIELDS["messages"], "prompt": texts,
                "input": st.one_of(texts, st.lists(texts, max_size=3))}
    shaped = st.fixed_dictionaries(
        required, optional={k: v for k, v in FIELDS.items() if k not in required})
    whole = weighted((10, mutated(shaped)), (1, anything)).map(encode)
    garbage = st.one_of(st.binary(max_size=64), st.sampled_from(
        [b"", b" ", b"\xff\xfe", b'{"model": "\xff"}', b"{" * 100_000, b'"\\ud800"',
         b'{"model": "m"} trailing', b"\x00", b'\xef\xbb\xbf{"model": "m"}',
         '{"model": "m"}'.encode("utf-16"), b'{"model": "\xed\xa0\x80"}']))
    return weighted((12, whole), (1, garbage))


_QUERY_KEYS = ["model", "ctx", "endpoint", "limit", "node", "name", "x"]
_QUERY_VALUES = ["", "1", "-1", "9" * 5000, "²", "1e3", "%ff%fe", "%00", "%ud800", "chat",
                 "embed", "llama3", "a" * 5000, "x&y=1", "%e2%80%ae"]


def query_strings() -> st.SearchStrategy[str]:
    pair = st.tuples(st.sampled_from(_QUERY_KEYS),
                     st.one_of(st.sampled_from(_QUERY_VALUES), st.text(max_size=10).map(quote)))
    return st.lists(pair, max_size=4).map(lambda ps: "&".join(f"{k}={v}" for k, v in ps))


def path_names(models: list[str]) -> st.SearchStrategy[str]:
    """What follows a prefix endpoint (`/v1/models/`): a name, escaped as a client would."""
    raw = st.one_of(st.sampled_from(models), st.sampled_from(["%ff", "%00", "..", "a/b", "x" * 9000,
                                                              "%2e%2e%2f", "pool"]))
    return st.one_of(raw, st.text(max_size=30).map(lambda t: quote(t, safe="/")))
