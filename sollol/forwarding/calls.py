"""A validated client request as the dispatcher and the dialect translators see it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import attrs

from sollol.core.access import AccessKey
from sollol.models import Api, RouteRequest

Op = Literal["chat", "generate", "completions", "embed", "embeddings", "show", "messages",
             "responses", "count_tokens"]
"""`messages`: Anthropic's `/v1/messages`; `responses`: OpenAI's `/v1/responses`;
`count_tokens`: Anthropic's `/v1/messages/count_tokens`."""

PATHS: dict[tuple[Api, Op], str] = {
    ("ollama", "generate"): "/api/generate",
    ("ollama", "chat"): "/api/chat",
    ("ollama", "embed"): "/api/embed",
    ("ollama", "embeddings"): "/api/embeddings",
    ("ollama", "show"): "/api/show",
    ("openai", "chat"): "/v1/chat/completions",
    ("openai", "completions"): "/v1/completions",
    ("openai", "embed"): "/v1/embeddings",
    ("openai", "responses"): "/v1/responses",
    ("anthropic", "messages"): "/v1/messages",
    ("anthropic", "count_tokens"): "/v1/messages/count_tokens",
}
"""Every endpoint whose requests are routed to a backend: (dialect, operation) -> the path the
gateway serves it at (its route table is built from this), and by which a request is named in
the access log, the dashboard and `RouteEvent.endpoint` (`endpoint_name`)."""


def endpoint_name(api: Api, op: Op) -> str:
    """A routed request's endpoint as events name it: its path less `/api/` or `/v1/`
    ("chat" for Ollama's `/api/chat`, "chat/completions" for OpenAI's, "show", "messages")."""
    path = PATHS.get((api, op))
    return path.split("/", 2)[2] if path else op


@attrs.frozen
class Call:
    """One validated client request: its dialect, operation, parsed body and original bytes."""

    api: Api
    op: Op
    body: Mapping[str, Any]
    raw: bytes
    request: RouteRequest
    key: AccessKey | None = None
    """The access key it came with, when its globs limit the models it may reach (core/scope.py)."""
