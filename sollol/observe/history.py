"""The last hour of traffic in fixed time buckets: request rate, errors, latency, tokens/s."""

from __future__ import annotations

import time
from collections import deque

import attrs

SAMPLES = 200
"""Latencies kept per bucket for its percentiles (the latest ones beyond that)."""


@attrs.define(slots=True)
class _Bucket:
    start: float
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    durations: list[float] = attrs.field(factory=list)

    def add_duration(self, seconds: float) -> None:
        # the latest SAMPLES of the bucket (a ring): cheaper than a random reservoir, and a
        # 10-second bucket's percentiles barely differ between its first and second half
        if len(self.durations) < SAMPLES:
            self.durations.append(seconds)
        else:
            self.durations[self.requests % SAMPLES] = seconds


@attrs.define
class History:
    """Buckets of `step` seconds covering `span` seconds, keyed by wall-clock time."""

    step: int = 10
    span: int = 3600
    _buckets: deque[_Bucket] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._buckets = deque(maxlen=self.span // self.step)

    def add(self, when: float, ok: bool, duration_s: float, tokens: int | None) -> None:
        start = when - when % self.step
        buckets = self._buckets
        if buckets and buckets[-1].start == start:
            bucket = buckets[-1]
        elif not buckets or buckets[-1].start < start:
            bucket = _Bucket(start)
            buckets.append(bucket)
        else:  # an event stamped before the newest bucket (it started earlier): find its own
            bucket = next((b for b in reversed(buckets) if b.start == start), None)
            if bucket is None:
                return  # older than what we keep, or fell in a gap: not worth reordering for
        bucket.add_duration(duration_s)
        bucket.requests += 1
        if not ok:
            bucket.errors += 1
        if tokens:
            bucket.tokens += tokens

    def rates(self, window: float = 60.0, now: float | None = None) -> dict[str, float]:
        """Requests, errors and generated tokens per second over the last `window` seconds
        (whole buckets: the window's start is rounded down to a bucket boundary)."""
        now = time.time() if now is None else now
        since = now - window
        since -= since % self.step
        recent = [b for b in self._buckets if b.start >= since]
        width = max(now - since, 1.0)
        return {"requests_per_second": round(sum(b.requests for b in recent) / width, 3),
                "errors_per_second": round(sum(b.errors for b in recent) / width, 3),
                "tokens_per_second": round(sum(b.tokens for b in recent) / width, 2)}

    def series(self, now: float | None = None) -> dict[str, object]:
        """Per-bucket values for the last `span` seconds, oldest first, gaps as zeros/None."""
        now = time.time() if now is None else now
        last = now - now % self.step
        count = self.span // self.step
        first = last - (count - 1) * self.step
        by_start = {b.start: b for b in self._buckets if b.start >= first}
        rate, errors, tokens, p50, p95 = [], [], [], [], []
        for index in range(count):
            bucket = by_start.get(first + index * self.step)
            # the current bucket is partial: rates over the time it has covered so far
            width = max(now - last, 1.0) if index == count - 1 else float(self.step)
            if bucket is None:
                rate.append(0.0)
                errors.append(0.0)
                tokens.append(0.0)
                p50.append(None)
                p95.append(None)
                continue
            rate.append(round(bucket.requests / width, 4))
            errors.append(round(bucket.errors / width, 4))
            tokens.append(round(bucket.tokens / width, 2))
            ordered = sorted(bucket.durations)
            p50.append(round(_quantile(ordered, 0.5), 4))
            p95.append(round(_quantile(ordered, 0.95), 4))
        return {"step": self.step, "start": first, "requests_per_second": rate,
                "errors_per_second": errors, "tokens_per_second": tokens,
                "latency_p50_s": p50, "latency_p95_s": p95}


def _quantile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
