"""A validated client request as the dispatcher and the dialect translators see it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import attrs

from sollol.core.access import AccessKey
from sollol.models import Api, RouteRequest

Op = Literal["chat", "generate", "completions", "embed", "embeddings", "show", "messages",
             "responses"]
"""`messages`: Anthropic's `/v1/messages`; `responses`: OpenAI's `/v1/responses`."""


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
