"""Stream framing shared by every stream object: the line still open, and JSON objects."""

from __future__ import annotations

from typing import Any

from sollol.dialects.jsonin import from_node
from sollol.errors import BackendError


class LineBuffer:
    """What a stream sent after its last newline, held as pieces until the newline comes (a long
    line arriving in many chunks is joined once, not copied again with every chunk)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pieces: list[bytes] = []
        self.size = 0

    def push(self, chunk: bytes) -> bytes | None:
        """The complete lines `chunk` finishes (without the last newline), None while a line
        is still open."""
        cut = chunk.rfind(b"\n")
        if cut < 0:
            self.pieces.append(chunk)
            self.size += len(chunk)
            if self.size > self.limit:
                raise BackendError(f"sent a stream line longer than {self.limit} bytes")
            return None
        head = chunk[:cut]
        if self.pieces:
            head = b"".join([*self.pieces, head])
            self.pieces, self.size = [], 0
        if cut + 1 < len(chunk):
            self.pieces.append(chunk[cut + 1:])
            self.size = len(chunk) - cut - 1
        return head

    def peek(self) -> bytes:
        """The open line so far."""
        return b"".join(self.pieces)

    def take(self) -> bytes:
        """The open line so far, emptying the buffer (at the end of the stream)."""
        rest = self.peek()
        self.pieces, self.size = [], 0
        return rest


def parse_object(raw: bytes) -> dict[str, Any] | None:
    """A JSON object from bytes, or None for anything else."""
    try:
        data = from_node(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
