"""Token counts for OpenAI streams whose client did not ask for them.

An OpenAI-compatible server (llama-server: pool nodes and sharding coordinators) reports a
stream's token counts only when asked (`stream_options.include_usage`), in one extra chunk with
no choices. The gateway needs the counts (metrics, the access log, a node's speed) whatever the
client asked, so it asks on the client's behalf and takes that chunk out again: the client gets
exactly the stream it asked for.
"""

from __future__ import annotations

import json
from typing import Any

from sollol.dialects.lines import LineBuffer, parse_object
from sollol.dialects.passthrough import Passthrough
from sollol.dialects.streams import MAX_LINE

STREAMED_OPS = ("chat", "completions")
"""OpenAI endpoints whose streams end with a usage chunk when asked."""


def ask_for_usage(op: str, body: dict[str, Any]) -> bytes | None:
    """The request to send instead of the client's, asking for usage; None when the client's
    own request already gets it (or is no stream)."""
    if op not in STREAMED_OPS or body.get("stream") is not True:
        return None
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        return None
    if options is not None and not isinstance(options, dict):
        return None  # not ours to repair: the server answers it as the client sent it
    return json.dumps({**body, "stream_options": {**(options or {}),
                                                  "include_usage": True}}).encode()


class HiddenUsage(Passthrough):
    """An OpenAI stream forwarded line by line, less the usage chunk (its counts are kept)."""

    def __init__(self) -> None:
        super().__init__(sse=True)
        self.lines = LineBuffer(MAX_LINE)
        self.dropped = False  # the blank line that ends a dropped event goes with it

    def feed(self, chunk: bytes) -> bytes:
        head = self.lines.push(chunk)
        if head is None:
            return b""
        kept = [out for line in head.split(b"\n") if (out := self._line(line)) is not None]
        return super().feed(b"".join(line + b"\n" for line in kept)) if kept else b""

    def finish(self) -> bytes:
        rest = self.lines.take()  # a last line the server did not end with a newline
        out = self._line(rest) if rest else None
        return super().feed(out) if out else b""

    def _line(self, line: bytes) -> bytes | None:
        """What the client gets for one line (None: nothing)."""
        return line if self._keep(line) else None

    def _keep(self, line: bytes) -> bool:
        if self.dropped and not line.strip():
            self.dropped = False
            return False
        self.dropped = False
        if not line.startswith(b"data:") or b'"usage"' not in line:
            return True
        data = parse_object(line.removeprefix(b"data:"))
        usage = data.get("usage") if data else None
        if not isinstance(usage, dict) or data.get("choices") not in ([], None):
            return True
        self.tokens = usage.get("completion_tokens")
        self.prompt_tokens = usage.get("prompt_tokens")
        self.dropped = True
        return False
