"""Unit tests of validation and Ollama <-> OpenAI translation (no servers)."""

from __future__ import annotations

import base64
import json
import struct

import pytest

from sollol.dialects.error_shapes import error_body, stream_error
from sollol.dialects.ollama_stream import SseToNdjson
from sollol.dialects.openai_stream import NdjsonToSse
from sollol.dialects.passthrough import Passthrough
from sollol.dialects.replies import ollama_reply_to_openai, openai_reply_to_ollama
from sollol.dialects.requests import ollama_to_openai, openai_to_ollama
from sollol.dialects.translate import plan
from sollol.errors import RequestError
from sollol.forwarding.validate import conversation_key, validate
from sollol.gateway.asgi import route_headers


def _call(api, op, body):
    return validate(api, op, json.dumps(body).encode())


def test_validate_builds_the_route_request():
    call = _call("ollama", "chat", {"model": "m", "messages": [], "options": {"num_ctx": 8192}})
    assert call.request.stream and call.request.context_length == 8192
    assert call.request.endpoint == "chat" and call.request.api == "ollama"
    embed = _call("openai", "embed", {"model": "e", "input": ["a"]})
    assert embed.request.endpoint == "embed" and not embed.request.stream
    completion = _call("openai", "completions", {"model": "m", "prompt": "x"})
    assert completion.request.endpoint == "generate" and not completion.request.stream


def test_validate_rejects_booleans_as_numbers():
    with pytest.raises(RequestError, match="'temperature'"):
        _call("openai", "chat", {"model": "m", "messages": [], "temperature": True})


def test_conversation_key_is_shared_by_later_turns_only():
    turn1 = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    turn2 = [*turn1, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "?"}]
    other = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "yo"}]
    assert conversation_key(turn1) == conversation_key(turn2) != conversation_key(other)
    assert conversation_key([{"role": "system", "content": "x"}]) is None
    assert _call("ollama", "chat", {"model": "m", "messages": turn2}).request.conversation_key \
        == conversation_key(turn1)


def test_ollama_chat_to_openai_maps_options_images_tools_and_format():
    path, body = ollama_to_openai("chat", {
        "model": "m", "stream": False, "format": "json", "keep_alive": "5m",
        "options": {"temperature": 0.2, "num_predict": 9, "stop": ["\n"], "top_k": 4,
                    "num_ctx": 2048},
        "messages": [
            {"role": "user", "content": "look", "images": ["iVBORw0KGgo="]},
            {"role": "assistant", "content": "",
             "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]},
            {"role": "tool", "content": "42", "tool_name": "f"},
        ],
    })
    assert path == "/v1/chat/completions"
    assert body["temperature"] == 0.2 and body["max_tokens"] == 9 and body["top_k"] == 4
    assert body["stop"] == ["\n"] and body["response_format"] == {"type": "json_object"}
    assert "num_ctx" not in body and "keep_alive" not in body
    image = body["messages"][0]["content"][1]["image_url"]["url"]
    assert image == "data:image/png;base64,iVBORw0KGgo="
    call = body["messages"][1]["tool_calls"][0]
    assert call["type"] == "function" and json.loads(call["function"]["arguments"]) == {"x": 1}
    assert body["messages"][2]["tool_call_id"] == "f"


def test_ollama_generate_to_openai_uses_chat_unless_raw():
    path, body = ollama_to_openai("generate", {"model": "m", "prompt": "hi", "system": "s"})
    assert path == "/v1/chat/completions" and body["stream"] is True
    assert body["messages"] == [{"role": "system", "content": "s"},
                                {"role": "user", "content": "hi"}]
    assert body["stream_options"] == {"include_usage": True}
    path, body = ollama_to_openai("generate", {"model": "m", "prompt": "hi", "raw": True,
                                               "stream": False})
    assert path == "/v1/completions" and body["prompt"] == "hi"


def test_openai_chat_to_ollama_maps_parts_and_rejects_what_it_cannot_send():
    path, body = openai_to_ollama("chat", {
        "model": "m", "max_tokens": 5, "stop": "END", "seed": 1,
        "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}},
        "messages": [{"role": "developer", "content": "rules"},
                     {"role": "user", "content": [
                         {"type": "text", "text": "what is"},
                         {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}}]},
                     {"role": "assistant", "tool_calls": [
                         {"id": "c1", "type": "function",
                          "function": {"name": "f", "arguments": "{\"y\": 2}"}}]}],
    })
    assert path == "/api/chat" and body["stream"] is False
    assert body["options"] == {"num_predict": 5, "stop": ["END"], "seed": 1}
    assert body["format"] == {"type": "object"}
    assert body["messages"][0]["role"] == "system"
    assert body["messages"][1] == {"role": "user", "content": "what is", "images": ["AAA"]}
    assert body["messages"][2]["tool_calls"] == [{"function": {"name": "f",
                                                               "arguments": {"y": 2}}}]
    with pytest.raises(RequestError, match="data: image URLs"):
        openai_to_ollama("chat", {"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}]}]})
    with pytest.raises(RequestError, match="n > 1"):
        openai_to_ollama("chat", {"model": "m", "messages": [], "n": 2})
    with pytest.raises(RequestError, match="token-array"):
        openai_to_ollama("embed", {"model": "m", "input": [[1, 2]]})


def test_same_dialect_plans_forward_the_original_bytes():
    raw = b'{"model": "m",  "messages": [{"role": "user", "content": "x"}], "odd":  1}'
    call = validate("ollama", "chat", raw)
    assert plan(call, "ollama").payload is raw
    assert plan(call, "openai").path == "/v1/chat/completions"
    # answered by the gateway itself on OpenAI-compatible backends
    assert plan(validate("ollama", "show", b'{"model": "m"}'), "openai").path is None
    assert plan(validate("ollama", "generate", b'{"model": "m"}'), "openai").path is None
    assert plan(validate("ollama", "generate", b'{"model": "m"}'), "ollama").path


def test_whole_replies_translate_both_ways():
    ollama = openai_reply_to_ollama("chat", {
        "choices": [{"message": {"content": "hi", "tool_calls": [
            {"function": {"name": "f", "arguments": "{\"a\": 1}"}}]}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2}}, "m", 0.5)
    assert ollama["message"]["content"] == "hi" and ollama["done_reason"] == "length"
    assert ollama["message"]["tool_calls"][0]["function"]["arguments"] == {"a": 1}
    assert ollama["eval_count"] == 2 and ollama["total_duration"] == 500_000_000
    openai = ollama_reply_to_openai("embed", {"embeddings": [[1.0, 2.0]],
                                              "prompt_eval_count": 4}, "e", "base64")
    raw = base64.b64decode(openai["data"][0]["embedding"])
    assert struct.unpack("<2f", raw) == (1.0, 2.0) and openai["usage"]["prompt_tokens"] == 4


def _feed_bytewise(stream, data: bytes) -> bytes:
    """Feed one byte at a time: translators must not depend on chunk boundaries."""
    out = b"".join(stream.feed(data[i:i + 1]) for i in range(len(data)))
    return out + stream.finish()


def test_sse_to_ndjson_survives_any_chunking_and_emits_one_done():
    events = [{"choices": [{"delta": {"role": "assistant"}}]},
              {"choices": [{"delta": {"content": "He"}}]},
              {"choices": [{"delta": {"content": "llo"}, "finish_reason": "stop"}]},
              {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 2}}]
    wire = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    stream = SseToNdjson("chat", "m")
    lines = [json.loads(x) for x in _feed_bytewise(stream, wire + b"data: [DONE]\n\n").split(b"\n")
             if x]
    assert [x["message"]["content"] for x in lines] == ["He", "llo", ""]
    assert lines[-1]["done"] and lines[-1]["eval_count"] == 2 and stream.complete


def test_sse_without_done_marker_is_incomplete():
    stream = SseToNdjson("generate", "m", raw_generate=True)
    out = _feed_bytewise(stream, b'data: {"choices": [{"text": "a"}]}\n\n')
    assert json.loads(out)["response"] == "a" and not stream.complete


def test_ndjson_to_sse_emits_role_content_finish_usage_and_done():
    lines = [{"message": {"role": "assistant", "content": "A"}, "done": False},
             {"message": {"role": "assistant", "content": "B"}, "done": False},
             {"message": {"role": "assistant", "content": ""}, "done": True,
              "done_reason": "stop", "prompt_eval_count": 1, "eval_count": 2}]
    wire = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    stream = NdjsonToSse("chat", "m", include_usage=True)
    events = _feed_bytewise(stream, wire).split(b"\n\n")
    payloads = [e.removeprefix(b"data: ") for e in events if e]
    assert payloads[-1] == b"[DONE]" and stream.complete and stream.tokens == 2
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "A"}
    assert chunks[1]["choices"][0]["delta"] == {"content": "B"}
    assert chunks[2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[3]["choices"] == [] and chunks[3]["usage"]["total_tokens"] == 3


def test_passthrough_detects_complete_streams_and_boundaries():
    ndjson = Passthrough(sse=False)
    ndjson.feed(b'{"done": false}\n{"done": true, "eval_count": 7}')
    assert not ndjson.at_boundary
    ndjson.feed(b"\n")
    assert ndjson.complete and ndjson.tokens == 7 and ndjson.at_boundary
    big = Passthrough(sse=False)  # a final line far larger than any chunk (generate's context)
    final = json.dumps({"done": True, "context": list(range(5000)), "eval_count": 3}).encode()
    for i in range(0, len(final), 1000):
        big.feed(final[i:i + 1000])
    assert big.complete and big.tokens == 3 and not big.at_boundary
    sse = Passthrough(sse=True)
    sse.feed(b'data: {"choices": []}\n\n')
    assert not sse.complete
    sse.feed(b"data: [DONE]\n\n")
    assert sse.complete


def test_a_backends_own_error_object_ends_a_stream():
    passthrough = Passthrough(sse=False)
    passthrough.feed(b'{"done": false}\n{"error": "out of memory"}\n')
    assert passthrough.complete and passthrough.error == "out of memory"
    to_sse = NdjsonToSse("chat", "m")
    out = to_sse.feed(b'{"error": "out of memory"}\n')
    assert b'"out of memory"' in out and to_sse.complete and to_sse.error == "out of memory"
    to_ndjson = SseToNdjson("chat", "m")
    out = to_ndjson.feed(b'data: {"error": {"message": "boom"}}\n\n')
    assert json.loads(out) == {"error": "boom"} and to_ndjson.complete
    assert to_ndjson.finish() == b""  # no `done` object after the error


def test_error_shapes_and_headers():
    assert json.loads(error_body("ollama", 404, "gone")) == {"error": "gone"}
    error = json.loads(error_body("openai", 503, "down", "no_backend_available"))["error"]
    assert error == {"message": "down", "type": "server_error", "param": None,
                     "code": "no_backend_available"}
    assert stream_error("ollama", "cut", at_line_start=False) == b'\n{"error": "cut"}\n'
    assert stream_error("openai", "cut", at_line_start=True).startswith(b"data: {")
    headers = dict(route_headers({"route": "pool", "backend": "n1", "policy": "p",
                                  "reason": "größer\r\nX-Evil: 1"}))
    assert headers[b"x-sollol-reason"] == b"gr%C3%B6%C3%9Fer%0D%0AX-Evil: 1"
