"""Memory that machines report about themselves, for placement and memory-fit.

Ollama does not report its devices' memory, so a pool node's total is declared by the operator
(`pool_node_memory`). A machine that reports its devices itself (a worker joined with `sollol
join`, on every heartbeat) fills this table instead, by backend id; readings older than `ttl`
seconds are ignored. The pool prefers a declared total, then a live reading.
"""

from __future__ import annotations

import time

import attrs

LIVE_TTL = 60.0


@attrs.frozen
class MemoryReading:
    """A backend's device memory as its machine last reported it (bytes)."""

    total: int
    free: int
    devices: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    at: float = attrs.field(factory=time.monotonic)


@attrs.define
class LiveMemory:
    """The latest reading per backend id. Only touched on the event loop's thread."""

    ttl: float = LIVE_TTL
    _readings: dict[str, MemoryReading] = attrs.field(factory=dict)

    def report(self, backend_id: str, reading: MemoryReading) -> None:
        self._readings[backend_id] = reading

    def forget(self, backend_id: str) -> None:
        self._readings.pop(backend_id, None)

    def get(self, backend_id: str, now: float | None = None) -> MemoryReading | None:
        """The reading of a backend, or None when there is none or it is older than `ttl`."""
        reading = self._readings.get(backend_id)
        now = time.monotonic() if now is None else now
        if reading is None or now - reading.at > self.ttl:
            return None
        return reading
