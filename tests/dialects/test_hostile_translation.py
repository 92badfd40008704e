"""Hostile request bodies through validation and dialect translation, without HTTP.

Every routed (dialect, operation) of the gateway, planned for an Ollama and an OpenAI-compatible
backend: a body is either refused with a RequestError (a 400) or becomes an upstream request
that is valid JSON, whose reply and stream convert back without error. Pure functions, so many
more examples than the HTTP-level tests afford.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings

from sollol.dialects.translate import convert_reply, new_stream, plan
from sollol.errors import RequestError
from sollol.forwarding.validate import _SCHEMAS, validate
from sollol.gateway.route_table import ROUTES
from sollol.testing.hostile import body_bytes

OPS = sorted({(r.api, r.op) for r in ROUTES if r.kind == "dispatch"})
MANY = settings(max_examples=250, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])

REPLIES = {
    "ollama": {"chat": {"model": "m", "message": {"role": "assistant", "content": "hi"},
                        "done": True, "done_reason": "stop", "eval_count": 1},
               "generate": {"model": "m", "response": "hi", "done": True, "eval_count": 1},
               "embed": {"model": "m", "embeddings": [[0.5, 0.25]]}},
    "openai": {"chat": {"choices": [{"index": 0, "message": {"role": "assistant",
                                                             "content": "hi"},
                                     "finish_reason": "stop"}], "usage": {}},
               "completions": {"choices": [{"index": 0, "text": "hi", "finish_reason": "stop"}]},
               "embed": {"data": [{"index": 0, "embedding": [0.5, 0.25]}], "usage": {}}},
}
STREAMS = {"ollama": b'{"message": {"content": "a"}, "response": "a", "done": false}\n'
                     b'{"message": {"content": ""}, "done": true, "eval_count": 1}\n',
           "openai": b'data: {"choices": [{"index": 0, "delta": {"content": "a"}, "text": "a"}]}'
                     b'\n\ndata: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"'
                     b'}]}\n\ndata: [DONE]\n\n',
           "/v1/responses": b'event: response.completed\ndata: {"type": "response.completed", '
                            b'"response": {"status": "completed", "output": [], "usage": '
                            b'{"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}}}\n\n'}


def strict_json(raw: bytes) -> object:
    """JSON as a strict parser reads it: no NaN or Infinity, UTF-8 only."""
    def refuse(name: str) -> object:
        raise ValueError(f"{name} in JSON sent upstream")
    return json.loads(raw.decode("utf-8"), parse_constant=refuse)


def reply_for(backend: str, path: str) -> bytes:
    op = {"/api/chat": "chat", "/api/generate": "generate", "/api/embed": "embed",
          "/api/embeddings": "embed", "/v1/chat/completions": "chat",
          "/v1/completions": "completions", "/v1/embeddings": "embed"}.get(path)
    return json.dumps(REPLIES[backend].get(op, {"model": "m"})).encode()


@pytest.mark.parametrize("backend", ["ollama", "openai"])
@pytest.mark.parametrize(("api", "op"), OPS, ids=[f"{a}-{o}" for a, o in OPS])
@MANY
@given(raw=body_bytes(["m", "m:latest"]))
def test_a_body_is_refused_with_a_400_or_translated_whole(api, op, backend, raw) -> None:
    try:
        call = validate(api, op, raw)
        upstream = plan(call, backend)
    except RequestError as exc:
        assert str(exc)
        return
    if upstream.path is None:  # answered by the gateway itself (show, load requests)
        return
    assert isinstance(strict_json(upstream.payload), dict)
    reply = convert_reply(call, upstream, reply_for(backend, upstream.path), 0.01)
    json.loads(reply)
    if call.request.stream:
        stream = new_stream(call, upstream)
        stream.feed(STREAMS.get(upstream.path, STREAMS[backend]))
        stream.finish()
        assert stream.error is None
        assert stream.complete


VALID = {"messages": [{"role": "user", "content": "hi"}], "prompt": "hi", "input": "hi",
         "max_tokens": 8}
WRONG = [1, -1, 2.5, "x", "", True, None, [], [1], {}, {"type": 1}, {"type": "json_schema",
         "json_schema": 1}, [{"type": 1}], [None]]
FIELDS = sorted({name for schema in _SCHEMAS.values() for name in schema})


@pytest.mark.parametrize("backend", ["ollama", "openai"])
@pytest.mark.parametrize(("api", "op"), OPS, ids=[f"{a}-{o}" for a, o in OPS])
def test_every_field_of_any_dialect_with_a_wrong_type_is_a_400_or_translated(
    api, op, backend,
) -> None:
    """Each field any dialect knows, with each ill-typed value, in a body otherwise valid for
    this operation: translation never reads a field its own validation let through untyped
    (as `response_format: 1` once did for /v1/completions)."""
    for field in FIELDS:
        for wrong in WRONG:
            body = {"model": "m", **VALID, field: wrong}
            try:
                call = validate(api, op, json.dumps(body).encode())
                upstream = plan(call, backend)
            except RequestError:
                continue
            if upstream.path is not None:
                assert isinstance(strict_json(upstream.payload), dict), (field, wrong)
                convert_reply(call, upstream, reply_for(backend, upstream.path), 0.01)
