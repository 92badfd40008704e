"""Check a client's request body before anything reaches a backend, and reduce it to a `Call`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from sollol.core import capabilities
from sollol.core.units import keep_alive_seconds
from sollol.dialects.jsonin import JSON_NAMES, json_type, parse_json_object
from sollol.errors import RequestError
from sollol.forwarding.calls import Call, Op
from sollol.models import Api, Endpoint, RouteRequest

_NUMBER = (int, float)
_TEXT_OR_LIST = (str, list)

# Field -> accepted JSON types. Fields not listed pass through unchecked (backends may know them).
_OLLAMA_COMMON: dict[str, tuple[type, ...] | type] = {
    "model": str, "stream": bool, "options": dict, "keep_alive": (str, int, float),
    "format": (str, dict), "think": (bool, str), "truncate": bool, "shift": bool,
    "logprobs": bool, "top_logprobs": int,
}
THINK_LEVELS = ("low", "medium", "high", "max")
"""The levels current Ollama accepts for `think` besides true and false."""
_SCHEMAS: dict[tuple[Api, Op], dict[str, Any]] = {
    ("ollama", "chat"): {**_OLLAMA_COMMON, "messages": list, "tools": list},
    ("ollama", "generate"): {**_OLLAMA_COMMON, "prompt": str, "suffix": str, "system": str,
                             "template": str, "context": list, "raw": bool, "images": list},
    ("ollama", "embed"): {**_OLLAMA_COMMON, "input": _TEXT_OR_LIST, "dimensions": int},
    ("ollama", "embeddings"): {**_OLLAMA_COMMON, "prompt": str},
    ("ollama", "show"): {"model": str, "verbose": bool},
    ("openai", "chat"): {"model": str, "messages": list, "stream": bool, "n": int,
                         "max_tokens": int, "max_completion_tokens": int,
                         "temperature": _NUMBER, "top_p": _NUMBER, "seed": int,
                         "stop": _TEXT_OR_LIST, "tools": list, "stream_options": dict,
                         "response_format": dict, "frequency_penalty": _NUMBER,
                         "presence_penalty": _NUMBER},
    ("openai", "completions"): {"model": str, "prompt": _TEXT_OR_LIST, "stream": bool, "n": int,
                                "max_tokens": int, "temperature": _NUMBER, "top_p": _NUMBER,
                                "seed": int, "stop": _TEXT_OR_LIST, "stream_options": dict,
                                "suffix": str, "echo": bool, "response_format": dict},
    ("openai", "embed"): {"model": str, "input": _TEXT_OR_LIST, "encoding_format": str,
                          "dimensions": int},
    ("openai", "responses"): {"model": str, "input": _TEXT_OR_LIST, "instructions": str,
                              "stream": bool, "tools": list, "tool_choice": (str, dict),
                              "max_output_tokens": int, "temperature": _NUMBER,
                              "top_p": _NUMBER, "reasoning": dict, "text": dict,
                              "top_logprobs": int, "store": bool, "metadata": dict,
                              "previous_response_id": str, "parallel_tool_calls": bool},
    ("anthropic", "messages"): {"model": str, "messages": list, "max_tokens": int,
                                "system": _TEXT_OR_LIST, "stream": bool, "tools": list,
                                "tool_choice": dict, "thinking": dict, "temperature": _NUMBER,
                                "top_p": _NUMBER, "top_k": int, "stop_sequences": list,
                                "metadata": dict, "output_config": dict},
    ("anthropic", "count_tokens"): {"model": str, "messages": list, "system": _TEXT_OR_LIST,
                                    "tools": list, "tool_choice": dict, "thinking": dict,
                                    "output_config": dict},
}
_FIELDS = {where: frozenset(schema) | {"name"} for where, schema in _SCHEMAS.items()}
"""Top-level fields read per operation: no key may spell one in another case (jsonkeys.py)."""
_REQUIRED: dict[tuple[Api, Op], tuple[str, ...]] = {
    ("openai", "chat"): ("messages",),
    ("openai", "completions"): ("prompt",),
    ("openai", "embed"): ("input",),
    ("openai", "responses"): ("input",),
    ("anthropic", "messages"): ("max_tokens", "messages"),
    ("anthropic", "count_tokens"): ("messages",),
}
_ENDPOINTS: dict[Op, Endpoint] = {"chat": "chat", "generate": "generate", "completions": "generate",
                                  "embed": "embed", "embeddings": "embed", "show": "chat",
                                  "messages": "chat", "responses": "chat",
                                  "count_tokens": "chat"}
_STREAM_DEFAULT = {("ollama", "chat"): True, ("ollama", "generate"): True}


def validate(api: Api, op: Op, raw: bytes) -> Call:
    """Parse and check a request for `op` in dialect `api`; raise RequestError when it is bad."""
    body, raw = parse_json_object(raw, _FIELDS[(api, op)])
    schema = _SCHEMAS[(api, op)]
    if op == "show" and "model" not in body and isinstance(body.get("name"), str):
        body["model"] = body["name"]  # older Ollama clients send `name`
    model = body.get("model")
    if model is None or model == "":
        raise RequestError("model is required")
    for name, value in body.items():  # bodies have fewer keys than the schema
        types = schema.get(name)
        if types is not None and value is not None and not _is(value, types):
            raise RequestError(f"field {name!r} must be {_describe(types)}, "
                               f"not {json_type(value)}")
    for name in _REQUIRED.get((api, op), ()):
        if body.get(name) is None:
            raise RequestError(f"field {name!r} is required")
    if op in ("chat", "messages", "count_tokens"):
        _check_messages(body.get("messages") or [], api)
    _check_formats(api, body, schema)
    if api == "ollama" and isinstance(body.get("options"), dict):
        _check_options(body["options"])
    think = body.get("think")
    if api == "ollama" and isinstance(think, str) and think not in THINK_LEVELS:
        raise RequestError(f"field 'think' must be true, false or one of "
                           f"{', '.join(THINK_LEVELS)}, not {think!r}")
    _check_lists(api, op, body)
    stream = body.get("stream")
    if stream is None:
        stream = _STREAM_DEFAULT.get((api, op), False)
    if api == "ollama":
        try:
            keep_alive_seconds(body.get("keep_alive"))
        except ValueError as exc:
            raise RequestError(str(exc)) from None
    options = body.get("options")  # (not in every op's schema: may be anything)
    ctx = options.get("num_ctx") if api == "ollama" and isinstance(options, dict) else None
    request = RouteRequest(
        model=model, endpoint=_ENDPOINTS[op], api=api,
        context_length=ctx if isinstance(ctx, int) and ctx > 0 else None,
        stream=bool(stream) and op in ("chat", "generate", "completions", "messages",
                                       "responses"),
        conversation_key=conversation_key(_conversation(op, body)),
        needs=capabilities.needs(op, body),
    )
    return Call(api=api, op=op, body=body, raw=raw, request=request)


def _conversation(op: Op, body: dict[str, Any]) -> Any:
    """The message list that identifies a conversation, for the ops that have one."""
    if op in ("chat", "messages"):
        messages = body.get("messages")
        system = body.get("system")
        if op == "messages" and system and isinstance(messages, list):
            return [{"role": "system", "content": system}, *messages]
        return messages
    if op == "responses":
        items = body.get("input")
        if isinstance(items, str):
            items = [{"role": "user", "content": items}]
        if body.get("instructions") and isinstance(items, list):
            return [{"role": "system", "content": body["instructions"]}, *items]
        return items
    return None


def conversation_key(messages: Any) -> str | None:
    """A stable hash of the system messages and the first user message (shared by later turns)."""
    if not isinstance(messages, list):
        return None
    prefix = []
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        role = message.get("role")
        if role in ("system", "developer"):
            prefix.append(["system", message.get("content")])
        elif role == "user":
            prefix.append(["user", message.get("content"), message.get("images")])
            break
    else:
        return None  # no user message yet: nothing identifies a conversation
    data = json.dumps(prefix, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.blake2b(data, digest_size=12).hexdigest()


def _check_messages(messages: list[Any], api: Api) -> None:
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise RequestError(f"{where} must be an object, not {json_type(message)}")
        if not isinstance(message.get("role"), str):
            raise RequestError(f"{where}.role must be a string")
        content = message.get("content")
        allowed: tuple[type, ...] = (str,) if api == "ollama" else (str, list)
        if content is not None and not isinstance(content, allowed):
            raise RequestError(f"{where}.content must be {_describe(allowed)}, "
                               f"not {json_type(content)}")
        if isinstance(content, list):
            _check_objects(content, f"{where}.content", "type")
        images = message.get("images")
        if images is not None and not (isinstance(images, list)
                                       and all(isinstance(i, str) for i in images)):
            raise RequestError(f"{where}.images must be an array of base64 strings")
        for name in _MESSAGE_STRINGS:
            value = message.get(name)
            if value is not None and not isinstance(value, str):
                raise RequestError(f"{where}.{name} must be a string, not {json_type(value)}")
        if message.get("tool_calls") is not None:
            _check_tool_calls(message["tool_calls"], f"{where}.tool_calls", api)


# Message fields that are strings in both dialects; translation copies them across.
_MESSAGE_STRINGS = ("name", "thinking", "tool_name", "tool_call_id", "reasoning_content")


def _check_tool_calls(calls: Any, where: str, api: Api) -> None:
    """Calls the model made, sent back in the history: each names a function object.

    Arguments are an object in Ollama and a JSON string in OpenAI (some clients send an
    object there too, which the gateway accepts).
    """
    _check_objects(calls, where)
    arguments: tuple[type, ...] = (dict,) if api == "ollama" else (str, dict)
    for index, call in enumerate(calls):
        function = call.get("function")
        if not isinstance(function, dict):
            raise RequestError(f"{where}[{index}].function must be an object")
        if not isinstance(function.get("name", ""), str):
            raise RequestError(f"{where}[{index}].function.name must be a string")
        value = function.get("arguments")
        if value is not None and not isinstance(value, arguments):
            raise RequestError(f"{where}[{index}].function.arguments must be "
                               f"{_describe(arguments)}, not {json_type(value)}")
        if not isinstance(call.get("id", ""), str):
            raise RequestError(f"{where}[{index}].id must be a string")


def _check_objects(items: Any, where: str, text_field: str | None = None) -> None:
    """An array of objects, each with a string `text_field` when one is named."""
    if not isinstance(items, list):
        raise RequestError(f"{where} must be an array, not {json_type(items)}")
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise RequestError(f"{where}[{index}] must be an object, not {json_type(item)}")
        if text_field and not isinstance(item.get(text_field), str):
            raise RequestError(f"{where}[{index}].{text_field} must be a string")


def _check_formats(api: Api, body: dict[str, Any], schema: dict[str, Any]) -> None:
    """Tools and structured-output requests: objects where translation reads fields (only
    for operations that take them: elsewhere unknown fields pass through)."""
    if "tools" in schema and body.get("tools") is not None:
        _check_objects(body["tools"], "tools")
        for index, tool in enumerate(body["tools"]):
            if tool.get("function") is not None and not isinstance(tool["function"], dict):
                raise RequestError(f"tools[{index}].function must be an object")
    fmt = body.get("response_format") if "response_format" in schema else None
    if fmt is not None:
        if not isinstance(fmt.get("type"), str):
            raise RequestError("response_format.type must be a string")
        json_schema = fmt.get("json_schema")
        if json_schema is not None and not (isinstance(json_schema, dict) and isinstance(
                json_schema.get("schema", {}), dict)):
            raise RequestError("response_format.json_schema must be an object whose schema "
                               "is an object")
    stop = body.get("stop") if api == "openai" and "stop" in schema else None
    if isinstance(stop, list) and not all(isinstance(s, str) for s in stop):
        raise RequestError("field 'stop' must be a string or an array of strings")


def _check_options(options: dict[str, Any]) -> None:
    for name, value in options.items():
        if name == "stop":
            if not (isinstance(value, list) and all(isinstance(s, str) for s in value)):
                raise RequestError("options.stop must be an array of strings")
        elif isinstance(value, (dict, list)):
            raise RequestError(f"options.{name} must be a number, string or boolean")


def _check_lists(api: Api, op: Op, body: dict[str, Any]) -> None:
    """Arrays whose items must be strings (embedding inputs, generate images)."""
    field = {"embed": "input", "generate": "images"}.get(op)
    if op == "completions":
        field = "prompt"
    value = body.get(field) if field else None
    if not isinstance(value, list):
        return
    ok_tokens = api == "openai" and op in ("embed", "completions") and all(
        isinstance(v, int) or (isinstance(v, list) and all(isinstance(t, int) for t in v))
        for v in value
    )
    if not ok_tokens and not all(isinstance(v, str) for v in value):
        raise RequestError(f"field {field!r} must be a string or an array of strings")


def _is(value: Any, types: tuple[type, ...] | type) -> bool:
    wanted = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in wanted:
        return False  # JSON true is not a number
    return isinstance(value, wanted)


def _describe(types: tuple[type, ...] | type) -> str:
    wanted = types if isinstance(types, tuple) else (types,)
    names = list(dict.fromkeys(JSON_NAMES[t] for t in wanted))
    return " or ".join(names)
