"""The garbage collector of a process that only serves the gateway (`sollol run`).

Young collections are made rare (a threshold of 50,000 allocations instead of 700) and
everything built at start-up is frozen out of the collector's sight: +10-20% requests/s and a
third off p99 at 32 connections (docs/performance.md). But the same thresholds put a full
collection hundreds of millions of allocations away, and cyclic garbage that outlives a young
collection (a request cut while it was in flight: its task, exception, traceback and frames)
then waited in the old generation for ever: RSS grew from 63 to 151 MiB over 430,000 keep-alive
requests (issue 27). So a full collection also runs every `FULL_EVERY` seconds, skipped when
nothing was allocated since the last one; with the start-up objects frozen it walks only what
the requests in flight hold, well under a millisecond.
"""

from __future__ import annotations

import asyncio
import gc

YOUNG_THRESHOLD = 50_000
FULL_EVERY = 1.0
"""Seconds between two full collections while anything is allocated."""


class TunedCollector:
    """Tunes the process's collector at `start`, and runs the periodic full collection."""

    def __init__(self, every: float = FULL_EVERY) -> None:
        self.every = every
        self.collections = 0
        """Full collections run by the timer (not counting those skipped as idle)."""
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        gc.collect()
        gc.freeze()
        gc.set_threshold(YOUNG_THRESHOLD, 50, 100)
        self._schedule()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.every, self._collect)

    def _collect(self) -> None:
        if gc.get_count() != (0, 0, 0):  # (all zero: no container allocated since the last)
            gc.collect()
            self.collections += 1
        self._schedule()
