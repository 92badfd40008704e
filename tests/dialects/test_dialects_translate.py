"""Anthropic Messages and OpenAI Responses translation, current Ollama fields, and the streams
that carry them: shapes, refusals that name the node kind, and any-chunking invariance."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sollol.dialects.anthropic import anthropic_to_ollama, ollama_reply_to_anthropic
from sollol.dialects.anthropic_stream import NdjsonToAnthropic
from sollol.dialects.error_shapes import error_body, stream_error
from sollol.dialects.ollama_stream import SseToNdjson
from sollol.dialects.openai_stream import NdjsonToSse
from sollol.dialects.passthrough import Passthrough
from sollol.dialects.replies import openai_reply_to_ollama
from sollol.dialects.requests import ollama_to_openai, openai_to_ollama
from sollol.dialects.responses import ollama_reply_to_responses, responses_to_ollama
from sollol.dialects.responses_stream import CompleteResponsesEvents, NdjsonToResponses
from sollol.dialects.streams import SSE_ENDS, Chain, Lines
from sollol.dialects.translate import plan
from sollol.errors import RequestError
from sollol.forwarding.calls import Call
from sollol.forwarding.validate import validate

CALL = {"id": "toolu_1", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
OLLAMA_STREAM = [
    {"message": {"role": "assistant", "content": "", "thinking": "let me"}, "done": False},
    {"message": {"role": "assistant", "content": "", "thinking": " think"}, "done": False},
    {"message": {"role": "assistant", "content": "Hello"}, "done": False,
     "logprobs": [{"token": "Hello", "logprob": -0.5, "bytes": [72]}]},
    {"message": {"role": "assistant", "content": " there"}, "done": False},
    {"message": {"role": "assistant", "content": "", "tool_calls": [CALL]}, "done": False},
    {"message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
     "prompt_eval_count": 7, "eval_count": 5},
]
NDJSON = b"".join(json.dumps(o).encode() + b"\n" for o in OLLAMA_STREAM)


def _sse_events(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for block in raw.split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                out.append(json.loads(line[6:]))
    return out


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[last:point])
        last = point
    return pieces


def _run(stream: Any, pieces: list[bytes]) -> bytes:
    return b"".join(stream.feed(p) for p in pieces) + stream.finish()


# ---------------------------------------------------------------------------------- Anthropic


def test_anthropic_request_to_ollama_chat() -> None:
    body = {"model": "m", "max_tokens": 64, "temperature": 0.2, "top_k": 5,
            "stop_sequences": ["END"], "thinking": {"type": "enabled", "budget_tokens": 900},
            "system": [{"type": "text", "text": "Be brief."}],
            "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                 "data": "iVBOR"}},
                    {"type": "text", "text": "Weather?"}]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "call it", "signature": "x"},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                     "input": {"city": "Oslo"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1",
                     "content": [{"type": "text", "text": "sunny"}]},
                    {"type": "text", "text": "And tomorrow?"}]}]}
    out = anthropic_to_ollama(body)
    assert out["options"] == {"num_predict": 64, "temperature": 0.2, "top_k": 5,
                              "stop": ["END"]}
    assert out["think"] is True and out["stream"] is False
    assert out["tools"][0]["function"]["parameters"] == {"type": "object"}
    assert out["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?", "images": ["iVBOR"]},
        {"role": "assistant", "content": "", "thinking": "call it",
         "tool_calls": [{"id": "toolu_1", "function": {"name": "get_weather",
                                                       "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
        {"role": "user", "content": "And tomorrow?"}]


@pytest.mark.parametrize(("change", "words"), [
    ({"tool_choice": {"type": "any"}}, "tool_choice 'any'"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "server tool"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
     "'document'"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "url", "url": "http://x/y.png"}}]}]}, "only base64 images"),
    ({"messages": [{"role": "system", "content": "x"}]}, "user or assistant"),
    ({"mcp_servers": [{"type": "url", "url": "http://x", "name": "x"}]}, "mcp_servers"),
])
def test_anthropic_refusals_name_the_node_kind(change: dict[str, Any], words: str) -> None:
    body = {"model": "m", "max_tokens": 8, "tools": [{"name": "t", "input_schema": {}}],
            "messages": [{"role": "user", "content": "x"}], **change}
    with pytest.raises(RequestError, match=words):
        anthropic_to_ollama(body)


def test_anthropic_reply_and_stream_from_ollama() -> None:
    reply = ollama_reply_to_anthropic({"message": {"content": "Hi", "thinking": "hmm",
                                                   "tool_calls": [CALL]},
                                       "done_reason": "stop", "prompt_eval_count": 3,
                                       "eval_count": 2}, "m")
    assert [b["type"] for b in reply["content"]] == ["thinking", "text", "tool_use"]
    assert reply["stop_reason"] == "tool_use" and reply["usage"] == {"input_tokens": 3,
                                                                     "output_tokens": 2}
    stream = NdjsonToAnthropic("m")
    events = _sse_events(_run(stream, [NDJSON]))
    assert [e["type"] for e in events] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "content_block_start", "content_block_delta",
        "content_block_delta", "content_block_stop", "content_block_start",
        "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert [e["index"] for e in events if e["type"] == "content_block_start"] == [0, 1, 2]
    assert events[-2]["delta"]["stop_reason"] == "tool_use"
    assert events[-2]["usage"]["output_tokens"] == 5
    assert stream.complete and stream.tokens == 5
    tool = [e for e in events if e.get("delta", {}).get("type") == "input_json_delta"]
    assert json.loads(tool[0]["delta"]["partial_json"]) == {"city": "Oslo"}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0), max_size=12))
def test_translated_streams_do_not_depend_on_chunking(cuts: list[int]) -> None:
    pieces = _chunks(NDJSON, cuts)
    for make in (lambda: NdjsonToAnthropic("m"), lambda: NdjsonToResponses({}, "m")):
        whole, split = make(), make()
        strip = [_strip_ids(e) for e in _sse_events(_run(whole, [NDJSON]))]
        assert [_strip_ids(e) for e in _sse_events(_run(split, pieces))] == strip
        assert split.complete and split.tokens == 5


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=8),
       st.sampled_from([b"", b"\n"]), st.lists(st.integers(min_value=0), max_size=12))
def test_line_splitting_does_not_depend_on_chunking(lines: list[bytes], end: bytes,
                                                    cuts: list[int]) -> None:
    raw = b"\n".join(lines) + end
    pieces = _chunks(raw, cuts)
    split = Lines()
    got = [line for piece in pieces for line in split.split(piece)] + split.rest()
    assert got == [line.strip() for line in raw.split(b"\n") if line.strip()]
    passthrough = Passthrough(sse=False)
    assert b"".join(passthrough.feed(piece) for piece in pieces) == raw
    complete = [line.strip() for line in raw.split(b"\n")[:-1] if line.strip()]
    assert passthrough.last == complete[-2:]
    assert passthrough.buffer.peek() == raw.split(b"\n")[-1]


def test_passthrough_counts_tokens_when_usage_and_done_arrive_together() -> None:
    usage = b'data: {"choices": [], "usage": {"completion_tokens": 5, "prompt_tokens": 3}}\n\n'
    together = Passthrough(sse=True)
    together.feed(usage + b"data: [DONE]\n\n")
    apart = Passthrough(sse=True)
    apart.feed(usage)
    apart.feed(b"data: [DONE]\n\n")
    for stream in (together, apart):
        assert stream.complete and (stream.tokens, stream.prompt_tokens) == (5, 3)


def _strip_ids(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_ids(v) for k, v in value.items()
                if k not in ("id", "item_id", "created_at", "call_id")}
    if isinstance(value, list):
        return [_strip_ids(v) for v in value]
    return value


def test_a_cut_stream_is_incomplete_and_an_error_line_ends_it() -> None:
    cut = NdjsonToAnthropic("m")
    _run(cut, [NDJSON.split(b"\n")[0] + b"\n"])
    assert not cut.complete
    failed = NdjsonToAnthropic("m")
    events = _sse_events(_run(failed, [b'{"error": "boom"}\n']))
    assert events[-1] == {"type": "error", "error": {"type": "api_error", "message": "boom"}}
    assert failed.complete and failed.error == "boom"


# ---------------------------------------------------------------------------------- Responses


def test_responses_request_to_ollama_chat() -> None:
    body = {"model": "m", "instructions": "Be brief.", "max_output_tokens": 32,
            "reasoning": {"effort": "minimal"}, "top_logprobs": 3,
            "text": {"format": {"type": "json_schema", "name": "x",
                                "schema": {"type": "object"}}},
            "tools": [{"type": "function", "name": "get_weather",
                       "parameters": {"type": "object"}}],
            "input": [
                {"role": "developer", "content": "Use tools."},
                {"role": "user", "content": [{"type": "input_text", "text": "Weather?"},
                                             {"type": "input_image",
                                              "image_url": "data:image/png;base64,iVBOR"}]},
                {"type": "reasoning", "summary": [{"type": "summary_text", "text": "call"}]},
                {"type": "function_call", "call_id": "c1", "name": "get_weather",
                 "arguments": '{"city": "Oslo"}'},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"}]}
    out = responses_to_ollama(body)
    assert out["think"] == "low" and out["format"] == {"type": "object"}
    assert out["options"] == {"num_predict": 32} and out["top_logprobs"] == 3
    assert out["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather?", "images": ["iVBOR"]},
        {"role": "assistant", "content": "", "thinking": "call",
         "tool_calls": [{"id": "c1", "function": {"name": "get_weather",
                                                  "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"}]


@pytest.mark.parametrize(("change", "words"), [
    ({"previous_response_id": "resp_1"}, "stateless"),
    ({"background": True}, "background"),
    ({"tools": [{"type": "web_search"}]}, "only function tools"),
    ({"tool_choice": "required", "tools": [{"type": "function", "name": "f"}]}, "forcing"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "item_reference"),
    ({"reasoning": {"effort": "huge"}}, "reasoning.effort"),
])
def test_responses_refusals(change: dict[str, Any], words: str) -> None:
    with pytest.raises(RequestError, match=words):
        responses_to_ollama({"model": "m", "input": "x", **change})


def test_responses_reply_and_stream_from_ollama() -> None:
    body = {"model": "m", "input": "x", "max_output_tokens": 4}
    reply = ollama_reply_to_responses(body, {"message": {"content": "Hi", "thinking": "hm",
                                                         "tool_calls": [CALL]},
                                             "done_reason": "length", "eval_count": 4}, "m")
    assert [i["type"] for i in reply["output"]] == ["reasoning", "message", "function_call"]
    assert reply["status"] == "incomplete"
    assert reply["incomplete_details"] == {"reason": "max_output_tokens"}
    assert json.loads(reply["output"][2]["arguments"]) == {"city": "Oslo"}
    events = _sse_events(_run(NdjsonToResponses(body, "m"), [NDJSON]))
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    done = [e["item"]["type"] for e in events if e["type"] == "response.output_item.done"]
    assert done == ["reasoning", "message", "function_call"]
    final = events[-1]["response"]
    assert [i["type"] for i in final["output"]] == done
    assert final["output"][1]["content"][0]["text"] == "Hello there"
    assert final["output"][1]["content"][0]["logprobs"][0]["token"] == "Hello"


def test_native_responses_events_get_the_indexes_the_client_needs() -> None:
    raw = (b'event: response.created\ndata: {"type":"response.created","response":{}}\n\n'
           b'event: response.output_item.added\ndata: {"type":"response.output_item.added",'
           b'"item":{"id":"m1","type":"message","content":[]}}\n\n'
           b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
           b'"item_id":"m1","delta":"Hi"}\n\n'
           b'event: response.completed\ndata: {"type":"response.completed","response":'
           b'{"usage":{"output_tokens":1}}}\n\n')
    fixer = CompleteResponsesEvents()
    events = _sse_events(_run(fixer, _chunks(raw, [17, 80, 81, 200])))
    # the content part the delta writes into is announced first (the stream helpers need it)
    assert [e["type"] for e in events][2:4] == ["response.content_part.added",
                                                "response.output_text.delta"]
    assert [e["sequence_number"] for e in events] == [0, 1, 2, 3, 4]
    assert events[1]["output_index"] == 0 and events[3]["output_index"] == 0
    assert events[3]["content_index"] == 0 and events[3]["logprobs"] == []
    assert fixer.complete and fixer.tokens == 1


@pytest.mark.parametrize(("tail", "complete"), [
    (b'event: message_stop\ndata: {"type":"message_stop"}\n\n', True),
    (b'event: response.completed\ndata: {"type":"response.completed","response":{}}\n\n', True),
    (b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n', False),
    (b'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"x"}}\n\n',
     True),
])
def test_passthrough_knows_when_native_anthropic_and_responses_streams_end(
    tail: bytes, complete: bool,
) -> None:
    stream = Passthrough(sse=True)
    stream.feed(b'event: ping\ndata: {"type":"ping"}\n\n' + tail)
    assert stream.complete is complete


# ------------------------------------------------------------------ current Ollama fields


def test_ollama_fields_for_an_openai_node() -> None:
    body = {"model": "m", "messages": [{"role": "assistant", "content": "x",
                                        "thinking": "hm"}],
            "think": "medium", "logprobs": True, "top_logprobs": 2, "shift": False}
    _path, out = ollama_to_openai("chat", body)
    assert out["reasoning_effort"] == "medium"
    assert out["chat_template_kwargs"] == {"enable_thinking": True}
    assert out["logprobs"] is True and out["top_logprobs"] == 2
    assert out["messages"][0]["reasoning_content"] == "hm" and "shift" not in out
    _path, off = ollama_to_openai("chat", {"model": "m", "messages": [], "think": False})
    assert off["chat_template_kwargs"] == {"enable_thinking": False}
    _path, raw = ollama_to_openai("generate", {"model": "m", "prompt": "p", "raw": True,
                                               "logprobs": True, "top_logprobs": 3})
    assert raw["logprobs"] == 3  # /v1/completions takes a count
    for field, value, words in (("think", "max", "think 'max'"), ("shift", True, "shift=true"),
                                ("truncate", True, "truncate=true")):
        with pytest.raises(RequestError, match=f"{words}.*OpenAI-compatible node"):
            ollama_to_openai("chat", {"model": "m", "messages": [], field: value})


def test_openai_fields_for_an_ollama_node() -> None:
    _path, out = openai_to_ollama("chat", {"model": "m", "reasoning_effort": "high",
                                           "logprobs": True, "top_logprobs": 4, "messages": [
                                               {"role": "assistant", "content": "x",
                                                "reasoning_content": "hm"}]})
    assert out["think"] == "high" and out["logprobs"] is True and out["top_logprobs"] == 4
    assert out["messages"][0]["thinking"] == "hm"
    _path, legacy = openai_to_ollama("completions", {"model": "m", "prompt": "p",
                                                     "logprobs": 2})
    assert legacy["top_logprobs"] == 2


def test_logprobs_come_back_in_each_dialect() -> None:
    sse = (b'data: {"choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":{"content":'
           b'[{"token":"Hi","logprob":-0.1,"bytes":[72,105],"top_logprobs":[]}]}}]}\n\n'
           b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
           b"data: [DONE]\n\n")
    lines = [json.loads(x) for x in _run(SseToNdjson("chat", "m"), [sse]).splitlines()]
    assert lines[0]["logprobs"] == [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105]}]
    back = _sse_events(_run(NdjsonToSse("chat", "m"), [NDJSON]))
    with_logprobs = [e for e in back if e.get("choices") and e["choices"][0]["logprobs"]]
    assert with_logprobs[0]["choices"][0]["logprobs"]["content"][0]["token"] == "Hello"


# ------------------------------------------------------------------ plans, validation, errors


def _call(path_api: str, op: str, body: dict[str, Any]) -> Call:
    return validate(path_api, op, json.dumps(body).encode())  # type: ignore[arg-type]


def test_plans_pass_native_endpoints_through_and_translate_the_rest() -> None:
    messages = _call("anthropic", "messages", {"model": "m", "max_tokens": 4,
                                               "messages": [{"role": "user", "content": "x"}]})
    native = plan(messages, "openai")
    assert (native.path, native.translated, native.payload) == ("/v1/messages", False,
                                                                messages.raw)
    translated = plan(messages, "ollama")
    assert translated.path == "/api/chat" and translated.translated
    responses = _call("openai", "responses", {"model": "m", "input": "x"})
    assert plan(responses, "openai").path == "/v1/responses"
    assert plan(responses, "ollama").path == "/api/chat"


def test_validation_of_the_new_endpoints() -> None:
    with pytest.raises(RequestError, match="max_tokens"):
        _call("anthropic", "messages", {"model": "m", "messages": []})
    with pytest.raises(RequestError, match="'input' is required"):
        _call("openai", "responses", {"model": "m"})
    with pytest.raises(RequestError, match="think"):
        _call("ollama", "chat", {"model": "m", "messages": [], "think": "loud"})
    with pytest.raises(RequestError, match="tool_name"):
        _call("ollama", "chat", {"model": "m", "messages": [{"role": "tool", "content": "",
                                                            "tool_name": 3}]})
    call = _call("anthropic", "messages", {"model": "m", "max_tokens": 4, "stream": True,
                                           "messages": [{"role": "user", "content": "x"}]})
    assert call.request.stream and call.request.conversation_key


def test_anthropic_error_shapes() -> None:
    for status, kind in ((400, "invalid_request_error"), (404, "not_found_error"),
                         (413, "request_too_large"), (429, "rate_limit_error"),
                         (503, "overloaded_error"), (502, "api_error")):
        body = json.loads(error_body("anthropic", status, "why"))
        assert body == {"type": "error", "error": {"type": kind, "message": "why"}}
    event = stream_error("anthropic", "cut", at_line_start=False)
    assert event.startswith(b"\n\nevent: error\ndata: ")
    assert json.loads(event.split(b"data: ")[1])["error"]["message"] == "cut"


# ------------------------------------------------------------------ any accepted body plans

_WORDS = st.sampled_from([
    "user", "assistant", "tool", "text", "image", "tool_use", "tool_result", "function_call",
    "function_call_output", "message", "reasoning", "enabled", "function", "input_text",
    "input_image", "base64", "data:image/png;base64,AA", "json_schema", "json_object", "low",
    "max", "none", "auto", "any", "required"])
_KEYS = st.sampled_from([
    "role", "content", "type", "text", "source", "data", "id", "name", "input", "tool_use_id",
    "is_error", "call_id", "arguments", "output", "summary", "image_url", "function",
    "parameters", "input_schema", "format", "effort", "schema", "images", "tool_calls",
    "thinking", "tool_name", "url"])
_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=5), _WORDS),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(_KEYS, inner, max_size=4)),
    max_leaves=12)
_FIELDS = {
    ("anthropic", "messages"): ("messages", "system", "tools", "tool_choice", "thinking",
                                "max_tokens", "stop_sequences", "stream"),
    ("openai", "responses"): ("input", "instructions", "tools", "tool_choice", "reasoning",
                              "text", "max_output_tokens", "top_logprobs", "stream"),
    ("ollama", "chat"): ("messages", "tools", "think", "format", "options", "logprobs",
                         "top_logprobs", "truncate", "shift"),
    ("ollama", "generate"): ("prompt", "images", "think", "format", "raw", "logprobs",
                             "top_logprobs", "system"),
    ("openai", "chat"): ("messages", "tools", "reasoning_effort", "logprobs", "top_logprobs",
                         "response_format", "stop", "n"),
}


_USER = [{"role": "user", "content": "x"}]
_VALID: dict[tuple[str, str], dict[str, Any]] = {
    ("anthropic", "messages"): {"max_tokens": 4, "messages": _USER},
    ("openai", "responses"): {"input": "x"}, ("ollama", "chat"): {"messages": _USER},
    ("ollama", "generate"): {"prompt": "x"}, ("openai", "chat"): {"messages": _USER},
}


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(_FIELDS)), st.data())
def test_every_accepted_body_is_planned_or_refused_for_every_node_kind(
    endpoint: tuple[str, str], data: st.DataObject,
) -> None:
    """Odd shapes inside valid JSON are a RequestError (a 400), never a crash (a 500)."""
    api, op = endpoint
    body = {"model": "m", **_VALID[endpoint]}  # random fields replace a valid base body's
    body.update({name: data.draw(_VALUE, label=name) for name in _FIELDS[endpoint]
                 if data.draw(st.booleans(), label=f"send {name}")})
    try:
        call = _call(api, op, body)
    except RequestError:
        return
    for backend in ("ollama", "openai"):
        for native in ((True, False) if op in ("messages", "responses") else (True,)):
            with contextlib.suppress(RequestError):
                plan(call, backend, native=native)  # type: ignore[arg-type]


_NODE_KEYS = st.sampled_from([
    "message", "content", "thinking", "tool_calls", "function", "name", "arguments", "done",
    "done_reason", "eval_count", "prompt_eval_count", "logprobs", "token", "logprob",
    "top_logprobs", "bytes", "error", "id", "type", "item", "item_id", "response", "usage",
    "output_tokens", "choices", "delta", "reasoning_content", "index", "finish_reason",
    "timings", "prompt_ms", "predicted_ms", "prompt_tokens", "completion_tokens", "text"])
_NODE_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=False),
              st.text(max_size=4)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(_NODE_KEYS, inner, max_size=4)),
    max_leaves=15)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(_NODE_KEYS, _NODE_VALUE, max_size=5), max_size=5))
def test_odd_node_answers_are_translated_without_crashing(objects: list[dict[str, Any]]) -> None:
    """Any JSON objects a node sends, whole or streamed, translate into the client's dialect
    (fields of the wrong type count as absent) instead of raising mid-request."""
    ndjson = b"".join(json.dumps(o).encode() + b"\n" for o in objects)
    sse = b"".join(b"data: " + json.dumps(o).encode() + b"\n\n" for o in objects)
    sse += b"data: [DONE]\n\n"
    for stream in (NdjsonToAnthropic("m"), NdjsonToResponses({}, "m"), NdjsonToSse("chat", "m")):
        _run(stream, [ndjson])
    for stream in (Chain(SseToNdjson("chat", "m"), NdjsonToAnthropic("m")),
                   Chain(SseToNdjson("chat", "m"), NdjsonToResponses({}, "m")),
                   CompleteResponsesEvents(), SseToNdjson("generate", "m", raw_generate=True)):
        _run(stream, [sse])
    for data in objects:
        ollama_reply_to_anthropic(data, "m")
        ollama_reply_to_responses({}, data, "m")
        ollama_reply_to_anthropic(openai_reply_to_ollama("chat", data, "m", 0.1), "m")


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(SSE_ENDS)),
       st.one_of(_NODE_VALUE, st.builds(lambda usage: {"usage": usage}, _NODE_VALUE)))
def test_odd_end_events_of_native_streams_end_them_without_crashing(kind: str,
                                                                   response: Any) -> None:
    """A native Anthropic or Responses stream's last event with a `response` (or its `usage`)
    of any JSON type ends the stream; the token count is read only from a well-typed one."""
    raw = b"event: " + kind.encode() + b"\ndata: " + json.dumps(
        {"type": kind, "response": response}).encode() + b"\n\n"
    passthrough = Passthrough(sse=True)
    passthrough.feed(raw)
    assert passthrough.complete
    native = CompleteResponsesEvents()
    _run(native, [raw])
    assert native.complete is (kind != "message_stop")


@settings(max_examples=100, deadline=None)
@given(_NODE_VALUE)
def test_an_odd_event_type_in_a_native_stream_does_not_crash(kind: Any) -> None:
    raw = b"data: " + json.dumps({"type": kind}).encode() + b"\n\n"
    passthrough = Passthrough(sse=True)
    passthrough.feed(raw)
    assert passthrough.complete is (kind in ("error", *SSE_ENDS))
