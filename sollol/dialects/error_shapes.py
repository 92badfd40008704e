"""Error bodies in each client dialect: Ollama's `{"error": "..."}`, OpenAI's error object and
Anthropic's `{"type": "error", "error": {"type": ..., "message": ...}}`."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from sollol.errors import (
    BackendError,
    Forbidden,
    ModelNotFound,
    NoRouteAvailable,
    NotSupported,
    Overloaded,
    PayloadTooLarge,
    SollolError,
    Unauthorized,
)
from sollol.models import Api

# OpenAI clients branch on `type` and `code`; these follow what api.openai.com sends.
_OPENAI_TYPES = {400: "invalid_request_error", 401: "invalid_request_error",
                 403: "invalid_request_error", 404: "invalid_request_error",
                 413: "invalid_request_error", 429: "rate_limit_error"}
# Anthropic's documented error types by HTTP status (docs.anthropic.com, "Errors").
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                    403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                    429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error object for `status` (the body of an error reply or an `error` event)."""
    if status in _ANTHROPIC_TYPES:
        kind = _ANTHROPIC_TYPES[status]
    elif status == 503:
        kind = "overloaded_error"
    else:
        kind = "api_error" if status >= 500 else "invalid_request_error"
    return {"type": "error", "error": {"type": kind, "message": message}}


def openai_error(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object for `status` (the body of an error reply or a stream's last event)."""
    fallback = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": _OPENAI_TYPES.get(status, fallback),
                      "param": None, "code": code}}


def error_body(api: Api, status: int, message: str, code: str | None = None,
               numbers: Mapping[str, Any] | None = None) -> bytes:
    """The JSON body of an error response for a client speaking `api`.

    `numbers` (the figures behind a routing refusal) are added as a field of their own.
    """
    payload: dict[str, Any]
    if api == "anthropic":
        payload = anthropic_error(status, message)
    elif api == "openai":
        payload = openai_error(status, message, code)
    else:
        payload = {"error": message}
    if numbers:  # Ollama's error is a bare string: the figures stand beside it
        (payload if api == "ollama" else payload["error"])["numbers"] = dict(numbers)
    return json.dumps(payload, default=str).encode()


_CODES: tuple[tuple[type[SollolError], str], ...] = (
    (ModelNotFound, "model_not_found"), (PayloadTooLarge, "request_too_large"),
    (Unauthorized, "invalid_api_key"), (Forbidden, "permission_denied"),
    (Overloaded, "overloaded"), (NoRouteAvailable, "no_backend_available"),
    (NotSupported, "not_supported"), (BackendError, "backend_error"))
"""Error class -> OpenAI `code`, most specific first (the first class an error is wins)."""


def error_code(exc: SollolError) -> str | None:
    """A short machine-readable code for OpenAI error objects."""
    return next((code for kind, code in _CODES if isinstance(exc, kind)), None)


def error_status(exc: SollolError) -> int:
    """The HTTP status for an exception (instances may carry their own, e.g. an upstream's)."""
    return int(getattr(exc, "status", 500))


def retry_after(exc: SollolError) -> str | None:
    """The `Retry-After` header value (whole seconds) for errors that ask the client to wait."""
    seconds = getattr(exc, "retry_after", None)
    if seconds is None:
        return None
    return str(max(1, math.ceil(seconds)))


def stream_error(api: Api, message: str, *, at_line_start: bool) -> bytes:
    """The error object that ends a stream cut after its first byte (never a silent truncation)."""
    if api == "ollama":
        lead = b"" if at_line_start else b"\n"
        return lead + json.dumps({"error": message}).encode() + b"\n"
    lead = b"" if at_line_start else b"\n\n"
    if api == "anthropic":
        event = b"event: error\ndata: " + json.dumps(anthropic_error(500, message)).encode()
    else:
        event = b"data: " + json.dumps(openai_error(500, message, "stream_interrupted")).encode()
    return lead + event + b"\n\n"
