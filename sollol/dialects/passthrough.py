"""A stream passed through in the client's own dialect: bytes forwarded untouched, while the last
lines are watched for how the stream ended (complete or not, tokens, an error it carried)."""

from __future__ import annotations

from sollol.dialects import streams
from sollol.dialects.lines import LineBuffer, parse_object
from sollol.dialects.streams import SSE_ENDS, as_text, end_usage, error_text


class Passthrough:
    """Same dialect on both sides: forward bytes untouched, remember the last lines."""

    def __init__(self, sse: bool) -> None:
        self.sse = sse
        self.buffer = LineBuffer(streams.MAX_LINE)  # (read now: one limit, set in streams)
        self.last: list[bytes] = []  # the last two non-empty complete lines
        self.end = b""
        self.tokens: int | None = None
        self.prompt_tokens: int | None = None
        self.error: str | None = None

    def feed(self, chunk: bytes) -> bytes:
        self.end = (self.end + chunk[-2:])[-2:]
        head = self.buffer.push(chunk)
        if head:
            self.last = _last_two(self.last, head)
            self._lines(head)
        return chunk

    def _lines(self, head: bytes) -> None:
        """Complete lines as they pass (a dialect whose counts come before its last lines
        reads them here)."""

    def finish(self) -> bytes:
        return b""

    @property
    def at_boundary(self) -> bool:
        return not self.end or self.end.endswith(b"\n\n" if self.sse else b"\n")

    @property
    def complete(self) -> bool:
        lines = self.last
        tail = self.buffer.peek().strip()  # a last line without its newline still counts
        if tail:
            lines = [*lines, tail][-2:]
        if not lines:
            return False
        last = lines[-1]
        if self.sse:
            return self._sse_complete(lines)
        data = parse_object(last)
        if data is None:
            return False
        if "error" in data:  # the backend ended the stream with its own error object
            self.error = str(data["error"])
            return True
        self.tokens = data.get("eval_count")
        self.prompt_tokens = data.get("prompt_eval_count")
        return bool(data.get("done"))

    @property
    def finish_seen(self) -> bool:
        """An OpenAI chat or completions stream has sent its finishing chunk (a choice with a
        `finish_reason`, possibly followed by the usage chunk): its answer is whole even if
        `[DONE]` never reaches the client."""
        if not self.sse:
            return False
        for line in reversed(self.last):
            data = parse_object(line.removeprefix(b"data:"))
            choices = data.get("choices") if data else None
            if not isinstance(choices, list):
                return False
            if any(isinstance(c, dict) and c.get("finish_reason") for c in choices):
                return True
            if choices:  # a content chunk: the answer goes on
                return False
        return False

    def _sse_complete(self, lines: list[bytes]) -> bool:
        """OpenAI streams end with `[DONE]`; Anthropic's with `message_stop`, Responses with
        `response.completed` (or `.incomplete`, `.failed`); an `error` event ends any of them."""
        payload = lines[-1].removeprefix(b"data:").strip()
        if payload == b"[DONE]":
            usage = parse_object(lines[0].removeprefix(b"data:")) if len(lines) > 1 else None
            if usage and isinstance(usage.get("usage"), dict):
                self.tokens = usage["usage"].get("completion_tokens")
                self.prompt_tokens = usage["usage"].get("prompt_tokens")
            return True
        data = parse_object(payload)
        if data is None:
            return False
        kind = as_text(data.get("type"))  # never unhashable: a set lookup follows
        if kind in SSE_ENDS:
            usage = end_usage(data)  # (Anthropic's `message_stop` has none: see `_lines`)
            if usage:
                self.tokens = usage.get("output_tokens")
                self.prompt_tokens = usage.get("input_tokens")
            return True
        if kind == "error":
            self.error = error_text(data.get("error"))
            return True
        return False


def _last_two(last: list[bytes], head: bytes) -> list[bytes]:
    """The last two non-empty lines of `last` and then `head`'s lines, read from the end of
    `head` (blank lines count for nothing: an SSE stream has one after every event)."""
    found: list[bytes] = []
    end = len(head)
    while len(found) < 2:
        start = head.rfind(b"\n", 0, end)
        line = head[start + 1:end].strip()
        if line:
            found.append(line)
        if start < 0:
            break
        end = start
    found.reverse()
    return (last + found)[-2:]
