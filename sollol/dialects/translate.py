"""How one call is sent to a backend of a given dialect, and how its reply comes back."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import attrs

from sollol.dialects.replies import (
    error_message,
    ollama_reply_to_openai,
    openai_reply_to_ollama,
)
from sollol.dialects.requests import ollama_to_openai, openai_to_ollama
from sollol.dialects.streams import NdjsonToSse, Passthrough, SseToNdjson
from sollol.errors import BackendError
from sollol.models import Api

if TYPE_CHECKING:
    from sollol.calls import Call

OLLAMA_PATHS = {"chat": "/api/chat", "generate": "/api/generate", "embed": "/api/embed",
                "embeddings": "/api/embeddings", "show": "/api/show"}
OPENAI_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions",
                "embed": "/v1/embeddings"}
JSON_TYPE = "application/json; charset=utf-8"
STREAM_TYPES: dict[Api, str] = {"ollama": "application/x-ndjson", "openai": "text/event-stream"}

Stream = Passthrough | SseToNdjson | NdjsonToSse


@attrs.frozen
class Plan:
    """The upstream request for one call on one backend dialect; `path` None: answer locally."""

    backend_api: Api
    path: str | None
    payload: bytes
    translated: bool
    raw_generate: bool = False


def plan(call: Call, backend_api: Api) -> Plan:
    """The path and body to send: the client's own bytes when the dialects match."""
    if call.api == backend_api:
        paths = OLLAMA_PATHS if backend_api == "ollama" else OPENAI_PATHS
        return Plan(backend_api, paths[call.op], call.raw, translated=False)
    if call.op == "show" or is_load_request(call):
        # OpenAI servers have no /api/show and no "just load the model" request: the gateway
        # answers these itself (from metadata; a loaded server has nothing to load).
        return Plan(backend_api, None, b"", translated=True)
    if backend_api == "openai":
        path, body = ollama_to_openai(call.op, call.body)
        raw_generate = call.op == "generate" and path == "/v1/completions"
    else:
        path, body = openai_to_ollama(call.op, call.body)
        raw_generate = False
    return Plan(backend_api, path, json.dumps(body).encode(), translated=True,
                raw_generate=raw_generate)


def is_load_request(call: Call) -> bool:
    """Ollama's "load the model" request: generate with no prompt, or chat with no messages."""
    body = call.body
    if call.api != "ollama":
        return False
    if call.op == "generate":
        return not (body.get("prompt") or body.get("system") or body.get("images"))
    return call.op == "chat" and not body.get("messages")


def convert_reply(call: Call, plan: Plan, raw: bytes, seconds: float) -> bytes:
    """A whole successful upstream reply, in the client's dialect."""
    if not plan.translated:
        return raw
    try:
        data: Any = json.loads(raw)
    except ValueError:
        msg = f"backend sent a reply that is not JSON: {raw[:200]!r}"
        raise BackendError(msg) from None
    if not isinstance(data, dict):
        raise BackendError("backend sent a JSON reply that is not an object")
    model = call.request.model
    if plan.backend_api == "openai":
        out = openai_reply_to_ollama(call.op, data, model, seconds, plan.raw_generate)
    else:
        encoding = str(call.body.get("encoding_format") or "float")
        out = ollama_reply_to_openai(call.op, data, model, encoding)
    return json.dumps(out, ensure_ascii=False).encode()


def convert_error(call: Call, plan: Plan, raw: bytes, status: int) -> bytes:
    """An upstream error body in the client's dialect (untouched when the dialects match)."""
    if not plan.translated:
        return raw
    from sollol.dialects.errors import error_body

    return error_body(call.api, status, error_message(raw))


def new_stream(call: Call, plan: Plan) -> Stream:
    """The object that turns upstream stream bytes into the client's stream format."""
    if not plan.translated:
        return Passthrough(sse=call.api == "openai")
    if plan.backend_api == "openai":
        return SseToNdjson(call.op, call.request.model, plan.raw_generate)
    options = call.body.get("stream_options") or {}
    return NdjsonToSse(call.op, call.request.model, bool(options.get("include_usage")))


_TOKEN_FIELDS = {"ollama": re.compile(rb'"eval_count"\s*:\s*(\d+)'),
                 "openai": re.compile(rb'"completion_tokens"\s*:\s*(\d+)')}


def tokens_in(raw: bytes, api: Api) -> int | None:
    """Generated tokens reported in a whole reply, if any (a scan: no second JSON parse)."""
    match = _TOKEN_FIELDS[api].search(raw)
    return int(match.group(1)) if match else None
