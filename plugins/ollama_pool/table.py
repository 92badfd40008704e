"""The balancer's decision for a model without re-reading every node: a table per model.

`balance.choose()` computes each candidate's task time, the median of the measured ones and the
aggregate rate of the faster nodes: O(nodes) per decision, which made scheduling cost grow with
the pool. A `ModelTable` holds those numbers (times, nodes sorted by time, prefix sums of rate
and capacity) and is rebuilt only after something changed: at once for small pools and for a
node joining, leaving, going down or coming back, and at most every `REFRESH` seconds for speed
estimates of large pools. A decision then looks only at the free nodes (the route keeps that
set) and, when the queue is long, at no other node at all: with a fresh table it is exactly
`choose()`'s decision (tests/pool/test_pool_scheduler.py checks that).
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Sequence

import attrs

from .balance import _bucket, fallback_seconds, task_seconds
from .node import Node

SMALL = 16
"""Pools up to this size rebuild a table on every change (the exact, uncached behaviour)."""
REFRESH = 0.1
"""Seconds a larger pool's table may lag behind its nodes' speed estimates."""


@attrs.define(eq=False)
class ModelTable:
    """Available holders of one model, sorted by expected task time."""

    order: list[Node]
    sorted_times: list[float]
    times: dict[Node, float]
    rank: dict[Node, int]
    """Position among the candidates: exact ties go to the earlier node, as in `choose()`."""
    prefix_rate: list[float]
    prefix_cap: list[int]
    stamp: int
    built: float

    @classmethod
    def build(cls, nodes: Sequence[Node], model: str, *, avg_tokens: float,
              cold_penalty: float, stamp: int, now: float) -> ModelTable:
        fallback = fallback_seconds(nodes, avg_tokens)
        timed = sorted(((task_seconds(n, model, avg_tokens=avg_tokens, fallback=fallback,
                                      cold_penalty=cold_penalty), i, n)
                        for i, n in enumerate(nodes)), key=lambda x: (x[0], x[1]))
        order = [n for _, _, n in timed]
        sorted_times = [t for t, _, _ in timed]
        prefix_rate, prefix_cap = [0.0], [0]
        for t, _, n in timed:
            prefix_rate.append(prefix_rate[-1] + n.cap / t)
            prefix_cap.append(prefix_cap[-1] + n.cap)
        return cls(order, sorted_times, {n: t for t, _, n in timed},
                   {n: i for _, i, n in timed}, prefix_rate, prefix_cap, stamp, now)

    def fresh(self, stamp: int, hard: int, now: float) -> bool:
        if self.stamp == stamp:
            return True
        if self.stamp < hard or len(self.order) <= SMALL:
            return False
        return now - self.built < REFRESH

    def decide(self, free: Collection[Node], queued: float) -> Node | None:
        """`choose()`'s placement among `free` nodes of this table, or None to wait."""
        times = self.times
        open_nodes = [n for n in free if n in times]
        if not open_nodes:
            return None
        rank = self.rank
        best = min(open_nodes, key=lambda n: (_bucket((n.in_flight + 1) * times[n]),
                                              n.in_flight / n.cap, n.last_pick, rank[n]))
        t_best = times[best]
        k = bisect.bisect_left(self.sorted_times, t_best)  # the nodes strictly faster
        if k == 0:
            return best
        rate = self.prefix_rate[k]
        if queued / rate >= t_best:  # even with every faster slot idle, they finish later
            return best
        if (queued + self.prefix_cap[k] / 2) / rate < t_best:
            finish = 0.0  # even with every faster slot busy, they finish sooner
        else:
            busy = sum(min(n.in_flight, n.cap) for n in self.order[:k])
            finish = (queued + busy / 2) / rate
        if finish >= t_best:
            return best
        faster = [n for n in open_nodes if times[n] < t_best]
        if not faster:
            return None  # wait for the faster nodes
        return min(faster, key=lambda n: (times[n], n.in_flight / n.cap, n.last_pick, rank[n]))
