"""An OpenAI chat stream passed through, repaired where a node breaks the official clients.

llama-server (this project's build) leaves the assistant `role` out of a stream whose first
generated token is an incomplete UTF-8 sequence (its first chunk is then a content chunk): the
OpenAI JS library's `chat.completions.stream()` helper then fails with "missing role for choice
0". The first chunk of a stream that has no role gets `"role": "assistant"`; every other line
passes untouched (and the usage chunk is taken out when the gateway asked for it).
"""

from __future__ import annotations

import json

from sollol.dialects.lines import parse_object
from sollol.dialects.usage_tap import HiddenUsage


class ChatPassthrough(HiddenUsage):
    """A node's own chat.completion.chunk stream, line by line."""

    def __init__(self, hide_usage: bool) -> None:
        super().__init__()
        self.hide_usage = hide_usage
        self.checked = False  # the first chunk has been seen

    def _line(self, line: bytes) -> bytes | None:
        if self.hide_usage and not self._keep(line):
            return None
        if self.checked or not line.startswith(b"data:"):
            return line
        self.checked = True
        return with_role(line)


def with_role(line: bytes) -> bytes:
    """A first `data:` line whose choices' deltas all lack a role, given the assistant's."""
    data = parse_object(line.removeprefix(b"data:"))
    choices = data.get("choices") if data else None
    if not isinstance(choices, list) or not choices:
        return line
    deltas = [c.get("delta") for c in choices if isinstance(c, dict)]
    if not deltas or not all(isinstance(d, dict) and "role" not in d for d in deltas):
        return line
    for delta in deltas:
        delta["role"] = "assistant"
    return b"data: " + json.dumps(data, ensure_ascii=False).encode()
