"""How one call is sent to a backend of a given dialect, and how its reply comes back."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import attrs

from sollol.dialects.anthropic import anthropic_to_ollama, ollama_reply_to_anthropic
from sollol.dialects.anthropic_stream import AnthropicPassthrough, NdjsonToAnthropic
from sollol.dialects.chat_passthrough import ChatPassthrough
from sollol.dialects.error_shapes import error_body
from sollol.dialects.jsonin import from_node
from sollol.dialects.ollama_stream import SseToNdjson
from sollol.dialects.openai_stream import NdjsonToSse
from sollol.dialects.passthrough import Passthrough
from sollol.dialects.replies import (
    error_message,
    ollama_reply_to_openai,
    openai_reply_to_ollama,
)
from sollol.dialects.requests import ollama_to_openai, openai_to_ollama
from sollol.dialects.responses import ollama_reply_to_responses, responses_to_ollama
from sollol.dialects.responses_stream import CompleteResponsesEvents, NdjsonToResponses
from sollol.dialects.streams import Chain
from sollol.dialects.usage_tap import HiddenUsage, ask_for_usage
from sollol.errors import BackendError, RequestError
from sollol.models import Api

if TYPE_CHECKING:
    from sollol.forwarding.calls import Call

OLLAMA_PATHS = {"chat": "/api/chat", "generate": "/api/generate", "embed": "/api/embed",
                "embeddings": "/api/embeddings", "show": "/api/show"}
OPENAI_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions",
                "embed": "/v1/embeddings", "responses": "/v1/responses"}
NATIVE: dict[tuple[Api, str], dict[Api, str]] = {
    **{("ollama", op): {"ollama": path} for op, path in OLLAMA_PATHS.items()},
    **{("openai", op): {"openai": path} for op, path in OPENAI_PATHS.items()},
    # llama-server (pool nodes and sharding coordinators) answers Anthropic's Messages API
    ("anthropic", "messages"): {"openai": "/v1/messages"},
    ("anthropic", "count_tokens"): {"openai": "/v1/messages/count_tokens"},
}
"""Client endpoint -> the node dialects that serve it natively, at which path (pass-through)."""
NODE_KINDS: dict[Api, str] = {"ollama": "an Ollama node",
                              "openai": "an OpenAI-compatible node (llama-server, vLLM)",
                              "anthropic": "an Anthropic-dialect node"}
JSON_TYPE = "application/json; charset=utf-8"
STREAM_TYPES: dict[Api, str] = {"ollama": "application/x-ndjson", "openai": "text/event-stream",
                                "anthropic": "text/event-stream"}

Stream = (Passthrough | SseToNdjson | NdjsonToSse | NdjsonToAnthropic | NdjsonToResponses
          | CompleteResponsesEvents | Chain)
NOT_SERVED = frozenset({404, 405, 501})
"""Statuses by which a node says it has no such endpoint (then the call is translated)."""


def falls_back(call: Call, plan: Plan, status: int) -> bool:
    """True when a node refused a natively planned Messages or Responses call as an unknown
    endpoint (vLLM, older llama-server): send it again translated to a chat completion."""
    return (status in NOT_SERVED and not plan.translated and plan.backend_api == "openai"
            and call.op in ("messages", "responses", "count_tokens"))


@attrs.frozen
class Plan:
    """The upstream request for one call on one backend dialect; `path` None: answer locally."""

    backend_api: Api
    path: str | None
    payload: bytes
    translated: bool
    raw_generate: bool = False
    hidden_usage: bool = False
    """The payload asks an OpenAI server for the usage chunk the client did not ask for."""


def plan(call: Call, backend_api: Api, native: bool = True) -> Plan:
    """The path and body to send: the client's own bytes when the node serves the endpoint
    (`native=False`: translated even so, for a node that turned out not to serve it)."""
    native_path = NATIVE.get((call.api, call.op), {}).get(backend_api) if native else None
    if native_path is not None:
        asked = (ask_for_usage(call.op, dict(call.body))
                 if call.api == backend_api == "openai" else None)
        return Plan(backend_api, native_path, asked or call.raw, translated=False,
                    hidden_usage=asked is not None)
    if call.op in ("messages", "responses"):
        # through Ollama's chat shape; an OpenAI node then gets it as a chat completion
        body = (anthropic_to_ollama(dict(call.body)) if call.op == "messages"
                else responses_to_ollama(dict(call.body)))
        if backend_api == "ollama":
            return Plan(backend_api, "/api/chat", json.dumps(body).encode(), translated=True)
        if backend_api != "openai":
            raise RequestError(f"{call.op} requests cannot be sent to {NODE_KINDS[backend_api]}")
        path, chat = ollama_to_openai("chat", body)
        return Plan(backend_api, path, json.dumps(chat).encode(), translated=True)
    if call.op in ("show", "count_tokens") or is_load_request(call):
        # OpenAI servers have no /api/show and no "just load the model" request, Ollama no
        # token count: the gateway answers these itself (from metadata; a loaded server has
        # nothing to load; sollol.forwarding.token_count).
        return Plan(backend_api, None, b"", translated=True)
    if backend_api == "openai":
        path, body = ollama_to_openai(call.op, dict(call.body))
        raw_generate = call.op == "generate" and path == "/v1/completions"
    else:
        path, body = openai_to_ollama(call.op, dict(call.body))
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
        data: Any = from_node(raw)
    except ValueError:
        msg = f"backend sent a reply that is not JSON: {raw[:200]!r}"
        raise BackendError(msg) from None
    if not isinstance(data, dict):
        raise BackendError("backend sent a JSON reply that is not an object")
    model = call.request.model
    if call.op in ("messages", "responses") and plan.backend_api == "openai":
        data = openai_reply_to_ollama("chat", data, model, seconds)
    if call.op == "messages":
        out = ollama_reply_to_anthropic(data, model)
    elif call.op == "responses":
        out = ollama_reply_to_responses(dict(call.body), data, model)
    elif plan.backend_api == "openai":
        out = openai_reply_to_ollama(call.op, data, model, seconds, plan.raw_generate)
    else:
        encoding = str(call.body.get("encoding_format") or "float")
        out = ollama_reply_to_openai(call.op, data, model, encoding)
    return json.dumps(out, ensure_ascii=False).encode()


def convert_error(call: Call, plan: Plan, raw: bytes, status: int) -> bytes:
    """An upstream error body in the client's dialect (untouched when the dialects match;
    Anthropic clients always get Anthropic's error shape, which llama-server does not send)."""
    if not plan.translated and call.api != "anthropic":
        return raw
    return error_body(call.api, status, error_message(raw))


def new_stream(call: Call, plan: Plan) -> Stream:
    """The object that turns upstream stream bytes into the client's stream format."""
    if not plan.translated:
        if call.op == "responses":
            return CompleteResponsesEvents(dict(call.body), call.request.model)
        if call.op == "messages":
            return AnthropicPassthrough(call.request.model)
        if call.api == "openai" and call.op == "chat":
            return ChatPassthrough(hide_usage=plan.hidden_usage)
        return HiddenUsage() if plan.hidden_usage else Passthrough(sse=call.api != "ollama")
    model = call.request.model
    if call.op in ("messages", "responses"):
        out: Stream = (NdjsonToAnthropic(model) if call.op == "messages"
                       else NdjsonToResponses(dict(call.body), model))
        if plan.backend_api == "openai":
            return Chain(SseToNdjson("chat", model), out)
        return out
    if plan.backend_api == "openai":
        return SseToNdjson(call.op, call.request.model, plan.raw_generate)
    options = call.body.get("stream_options") or {}
    return NdjsonToSse(call.op, call.request.model, bool(options.get("include_usage")))


_TOKEN_FIELDS = {"ollama": re.compile(rb'"eval_count"\s*:\s*(\d+)'),
                 "openai": re.compile(rb'"(?:completion|output)_tokens"\s*:\s*(\d+)'),
                 "anthropic": re.compile(rb'"output_tokens"\s*:\s*(\d+)')}


_PROMPT_FIELDS = {"ollama": re.compile(rb'"prompt_eval_count"\s*:\s*(\d+)'),
                  "openai": re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')}


def tokens_in(raw: bytes, api: Api) -> int | None:
    """Generated tokens reported in a whole reply, if any (a scan: no second JSON parse)."""
    match = _TOKEN_FIELDS[api].search(raw)
    return int(match.group(1)) if match else None


def prompt_tokens_in(raw: bytes, api: Api) -> int | None:
    """Prompt tokens reported in a whole reply, if any (a scan, like `tokens_in`)."""
    match = _PROMPT_FIELDS[api].search(raw)
    return int(match.group(1)) if match else None
