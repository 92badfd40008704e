"""Node secrets, wherever a node echoes them, never leave the gateway.

A node that refuses its key says so, and some quote it (`Incorrect API key provided: Bearer
sk-...`); from there it would reach the client, the event log, `/sollol/*`, the access logs and
SOLLOL's own log. One `Redactor`, built from every secret the cluster holds (each backend's
`credentials`, in every form a node could echo: the header value, the bare key, a Basic token and
its decoded password), replaces them with `***` at each of those outputs: error and management
responses and `/sollol/*` (the gateway's `send`), route events (`ClusterRuntime.record`), and log
lines (a filter on SOLLOL's log handlers); a keyed node's own 200 replies and streams are
redacted of its key by the dispatcher (nodes without a key cost nothing there).
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import attrs

from sollol.core.secret import REDACTED, Secret

if TYPE_CHECKING:
    from sollol.models import RouteEvent
    from sollol.routes import RouteProvider

MIN_LENGTH = 6
"""Shorter secrets are not searched for: replacing every `abc` would garble every reply."""


def secret_texts(credentials: Secret | None) -> set[str]:
    """Every form of one `Authorization` value a node could echo."""
    if not credentials:
        return set()
    value = credentials.reveal()
    scheme, _, token = value.partition(" ")
    found = {value, token.strip()}
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        found |= {decoded, decoded.partition(":")[2]}
    return {text for text in found if len(text) >= MIN_LENGTH}


@attrs.frozen
class Redactor:
    """Replaces each secret (longest first, so a key inside its header value goes too)."""

    secrets: tuple[str, ...] = ()

    @classmethod
    def of(cls, texts: Iterable[str]) -> Redactor:
        return cls(tuple(sorted(set(texts), key=len, reverse=True)))

    def __bool__(self) -> bool:
        return bool(self.secrets)

    def text(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def data(self, data: bytes) -> bytes:
        for secret in self.secrets:
            raw = secret.encode()
            if raw in data:
                data = data.replace(raw, REDACTED.encode())
        return data

    def event(self, event: RouteEvent) -> RouteEvent:
        """`event` with its node-made text (the error) redacted."""
        if not self.secrets or not event.error:
            return event
        error = self.text(event.error)
        return event if error == event.error else attrs.evolve(event, error=error)


def routes_redactor(routes: Iterable[RouteProvider]) -> Redactor:
    """The redactor for every backend credential the routes hold right now."""
    texts: set[str] = set()
    for provider in routes:
        for state in provider.state().backends:
            texts |= secret_texts(state.backend.credentials)
    return Redactor.of(texts)


class LogRedaction(logging.Filter):
    """A handler filter: log messages redacted by the current `redactor()`."""

    def __init__(self, redactor: Callable[[], Redactor]) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:  # a log call must never fail: routes may change under another thread's call
            redactor = self.redactor()
            if redactor:
                message = record.getMessage()
                clean = redactor.text(message)
                if clean != message:
                    record.msg, record.args = clean, None
        except Exception:
            record.msg, record.args = "(a log line that could not be checked for secrets)", None
        return True
