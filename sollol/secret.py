"""A credential that never prints itself: logs, reprs, JSON and error messages show `***`."""

from __future__ import annotations

import hmac

REDACTED = "***"


class Secret:
    """A secret string; `reveal()` is the only way to read it (grep for it to audit uses)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED!r})"

    def __str__(self) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(Secret)  # equal secrets must hash alike without hashing the value itself

    def __bool__(self) -> bool:
        return bool(self._value)
