"""Streaming: what every stream object does, and the pieces the translators share.

Every stream object takes upstream bytes with `feed()` and returns what the client should get
now; `finish()` returns the closing bytes at upstream EOF. `complete` says whether the upstream
stream ended properly (Ollama: a `done: true` object; OpenAI: `data: [DONE]`), `tokens` the
generated token count when the backend reported it, and `error` an error object it sent.
`Passthrough` (passthrough.py) watches a stream in the client's own dialect; a `Translator`
turns one into another dialect: `SseToNdjson` (ollama_stream.py), `NdjsonToSse`
(openai_stream.py), `NdjsonToAnthropic` (anthropic_stream.py), `NdjsonToResponses`
(responses_stream.py), and `Chain` for two in a row.
"""

from __future__ import annotations

import json
from typing import Any

from sollol.dialects.lines import LineBuffer, parse_object
from sollol.dialects.ollama_shape import chat_object

MAX_LINE = 16 * 1024 * 1024
"""Longest stream line held while waiting for its newline (a node's lines are a few KiB)."""
RESPONSES_ENDS = frozenset({"response.completed", "response.incomplete", "response.failed"})
SSE_ENDS = RESPONSES_ENDS | {"message_stop"}  # with Anthropic's


def end_usage(data: dict[str, Any]) -> dict[str, Any]:
    """A Responses end event's `response.usage`; `{}` if absent or of the wrong JSON type."""
    return as_mapping(as_mapping(data.get("response")).get("usage"))


def error_text(error: Any) -> str:
    """The message of an error event's `error` (an object with a `message`, or a bare value)."""
    return str(error.get("message") if isinstance(error, dict) else error)


class Lines:
    """Split a byte stream into complete, stripped, non-empty lines."""

    def __init__(self) -> None:
        self.buffer = LineBuffer(MAX_LINE)

    def split(self, chunk: bytes) -> list[bytes]:
        head = self.buffer.push(chunk)
        if head is None:
            return []
        return [s for line in head.split(b"\n") if (s := line.strip())]

    def rest(self) -> list[bytes]:
        rest = self.buffer.take().strip()
        return [rest] if rest else []


class Translator:
    """A stream turned into another dialect: whole upstream lines in (`_line` says what one
    becomes), whole client lines or events out."""

    at_boundary = True  # only whole lines or events are ever emitted

    def __init__(self) -> None:
        self.lines = Lines()
        self.complete = False
        self.tokens: int | None = None
        self.prompt_tokens: int | None = None
        self.error: str | None = None

    def feed(self, chunk: bytes) -> bytes:
        return b"".join([self._line(line) for line in self.lines.split(chunk)])

    def finish(self) -> bytes:
        return b"".join([self._line(line) for line in self.lines.rest()])

    def _line(self, line: bytes) -> bytes:
        raise NotImplementedError


class FromOllama(Translator):
    """An Ollama NDJSON stream in: each object, well typed by `chat_object`, goes to `_object`;
    an `{"error": ...}` object ends the stream with `_error`'s event instead."""

    def _line(self, line: bytes) -> bytes:
        if self.complete:
            return b""  # anything after the end
        raw = parse_object(line)
        if raw is None:
            return b""
        data = chat_object(raw)
        out = self._opening(data)
        if data["error"] is not None:
            self.error, self.complete = data["error"], True
            return out + self._error(data["error"])
        return out + self._object(raw, data)

    def _opening(self, data: dict[str, Any]) -> bytes:
        """What the client gets before the first object's events (nothing by default)."""
        return b""

    def _error(self, message: str) -> bytes:
        raise NotImplementedError

    def _object(self, raw: dict[str, Any], data: dict[str, Any]) -> bytes:
        raise NotImplementedError


class Chain:
    """Two translations in a row (an OpenAI SSE stream to NDJSON to a third dialect)."""

    at_boundary = True

    def __init__(self, first: Any, second: Any) -> None:
        self.first, self.second = first, second

    def feed(self, chunk: bytes) -> bytes:
        return self.second.feed(self.first.feed(chunk))

    def finish(self) -> bytes:
        return self.second.feed(self.first.finish()) + self.second.finish()

    @property
    def complete(self) -> bool:
        return bool(self.second.complete)

    @property
    def tokens(self) -> int | None:
        return self.second.tokens

    @property
    def prompt_tokens(self) -> int | None:
        return self.second.prompt_tokens

    @property
    def error(self) -> str | None:
        return self.first.error or self.second.error


def as_mapping(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else `{}` (a field of the wrong type counts as absent)."""
    return value if isinstance(value, dict) else {}


def as_text(value: Any) -> str:
    """`value` if it is a string, else ""."""
    return value if isinstance(value, str) else ""


def ndjson_line(obj: dict[str, Any]) -> bytes:
    """One NDJSON line (Ollama's streams)."""
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"


def sse_event(obj: dict[str, Any]) -> bytes:
    """One SSE `data:` event (OpenAI's streams)."""
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"
