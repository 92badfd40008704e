"""Which node takes a request: pure functions over node state, no I/O.

Each node's *task time* t is the expected seconds for one request there: the pool's average
tokens per request times the node's measured seconds per token, plus a cold-start penalty when
the model is not loaded on it. Among nodes with a free slot the lowest (in_flight + 1) * t
wins (least outstanding requests, weighted by speed); near-ties go to the less loaded node,
then to the one that got a request least recently.

A slower free node is passed over when the faster nodes (free or busy) would finish the whole
queue before it could finish this one request: the queue then waits for them. With a long queue
every node works; near the end slow nodes stop taking work that fast ones would finish sooner,
which keeps the makespan close to total work / total capacity.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import attrs

from .node import Node

DEFAULT_TASK_SECONDS = 1.0


@attrs.frozen
class Choice:
    """A placement (node) or a reason to wait (node None), with the numbers behind it."""

    node: Node | None
    reason: str
    task_seconds: float = 0.0


def task_seconds(node: Node, model: str, *, avg_tokens: float, fallback: float,
                 cold_penalty: float) -> float:
    """Expected seconds for one request of `model` on `node`."""
    if node.sec_per_token is not None:
        base = avg_tokens * node.sec_per_token
    elif node.request_seconds is not None:
        base = node.request_seconds
    else:
        base = fallback
    return base + (0.0 if node.is_loaded(model) else cold_penalty)


def fallback_seconds(nodes: Sequence[Node], avg_tokens: float) -> float:
    """A task time for nodes not measured yet: the median of the measured ones."""
    known = [avg_tokens * n.sec_per_token for n in nodes if n.sec_per_token is not None]
    known += [n.request_seconds for n in nodes
              if n.sec_per_token is None and n.request_seconds is not None]
    return statistics.median(known) if known else DEFAULT_TASK_SECONDS


def _bucket(seconds: float) -> int:
    """Scores within ~15% of each other tie: measured speeds are noisy, and a tie spreads work
    by load and then round-robin instead of always favouring the luckiest measurement."""
    return round(math.log(max(seconds, 1e-9)) / math.log(1.15))


def choose(candidates: Sequence[Node], model: str, *, queued: int, avg_tokens: float,
           cold_penalty: float) -> Choice:
    """Pick a node with a free slot for one request, or decide to wait.

    `candidates` are healthy nodes that hold the model; `queued` counts the requests that
    would wait for the same nodes, this one included.
    """
    if not candidates:
        return Choice(None, "no candidate")
    fallback = fallback_seconds(candidates, avg_tokens)
    times = {n.id: task_seconds(n, model, avg_tokens=avg_tokens, fallback=fallback,
                                cold_penalty=cold_penalty) for n in candidates}
    free = [n for n in candidates if n.in_flight < n.cap]
    if not free:
        return Choice(None, "every node holding the model is at its concurrency limit")
    best = min(free, key=lambda n: (_bucket((n.in_flight + 1) * times[n.id]),
                                    n.in_flight / n.cap, n.last_pick))
    t_best = times[best.id]
    faster = [n for n in candidates if times[n.id] < t_best and n is not best]
    if faster:
        rate = sum(n.cap / times[n.id] for n in faster)
        busy_slots = sum(min(n.in_flight, n.cap) for n in faster)
        finish_elsewhere = (queued + busy_slots / 2) / rate
        if finish_elsewhere < t_best:
            open_faster = [n for n in faster if n.in_flight < n.cap]
            if open_faster:
                pick = min(open_faster, key=lambda n: (times[n.id], n.in_flight / n.cap,
                                                       n.last_pick))
                return Choice(pick, "a faster node has a free slot", times[pick.id])
            return Choice(None, f"faster nodes finish the queue in {finish_elsewhere:.2f}s, "
                                f"before {best.id} would finish this one ({t_best:.2f}s)",
                          t_best)
    return Choice(best, "least outstanding, weighted by speed", t_best)
