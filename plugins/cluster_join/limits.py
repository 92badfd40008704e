"""Per-address failure counters for the join endpoints: bounded in memory, O(1) per request."""

from __future__ import annotations

import time
from collections import OrderedDict

import attrs

from .errors import JoinRefused

MAX_ADDRESSES = 1024
"""Addresses tracked at once; the least recently failing ones are forgotten first."""


@attrs.define
class FailureLimiter:
    """After `limit` failures within `window` seconds, an address is refused (429) until the
    window of its first counted failure has passed."""

    limit: int = 10
    window: float = 60.0
    max_addresses: int = MAX_ADDRESSES
    _failures: OrderedDict[str, tuple[float, int]] = attrs.field(factory=OrderedDict)

    def check(self, address: str, now: float | None = None) -> None:
        """Raise JoinRefused(429) while `address` is over its limit."""
        now = time.monotonic() if now is None else now
        entry = self._failures.get(address)
        if entry is None:
            return
        start, count = entry
        if now - start >= self.window:
            del self._failures[address]
        elif count >= self.limit:
            wait = int(self.window - (now - start)) + 1
            raise JoinRefused(f"too many failed attempts from {address}; try again in {wait} s",
                              429)

    def fail(self, address: str, now: float | None = None) -> None:
        """Count one failure of `address`."""
        now = time.monotonic() if now is None else now
        start, count = self._failures.pop(address, (now, 0))
        if now - start >= self.window:
            start, count = now, 0
        self._failures[address] = (start, count + 1)
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)

    def __len__(self) -> int:
        return len(self._failures)


@attrs.define
class LogBudget:
    """At most `lines` log lines per `window` seconds; how many were held back is told once the
    next window opens (a flood of refusals must not flood the journal)."""

    lines: int = 20
    window: float = 10.0
    _start: float = 0.0
    _used: int = 0
    _held: int = 0

    def take(self, now: float | None = None) -> tuple[bool, int]:
        """(may this line be logged, how many lines were held back before it)."""
        now = time.monotonic() if now is None else now
        held = 0
        if now - self._start >= self.window:
            self._start, self._used, held, self._held = now, 0, self._held, 0
        if self._used < self.lines:
            self._used += 1
            return True, held
        self._held += 1
        return False, held
