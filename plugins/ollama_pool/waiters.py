"""Requests waiting for a pool node: one FIFO queue per (model, pinned node, excluded nodes).

A release on node X can only help requests for a model X holds, so the pool wakes only those
queues, and in each only the head: the requests behind it have the same model and constraints,
so if the head cannot be placed neither can they. The work per release is bounded by the number
of queues that want X (plus the requests actually placed), not by the length of the queue.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
from collections import deque
from collections.abc import Iterable, Iterator

import attrs

from sollol.core.names import canonical_model
from sollol.models import RouteRequest

from .node import Node

QueueKey = tuple[str, str | None, frozenset[str]]


@attrs.define(eq=False)
class Waiter:
    """One request waiting for a node."""

    request: RouteRequest
    backend: str | None
    exclude: frozenset[str]
    future: asyncio.Future[object]
    seq: int = 0
    key: QueueKey = ("", None, frozenset())
    queued: bool = False

    @property
    def gone(self) -> bool:
        """Answered, failed or abandoned: no longer waiting."""
        return self.future.done()


@functools.lru_cache(maxsize=4096)
def canonical(model: str) -> str:
    """One spelling per model, so "m" and "m:latest" share a queue."""
    return canonical_model(model)


@attrs.define
class WaitQueues:
    """The pool's waiting requests, grouped so that a release inspects only what it can serve."""

    _queues: dict[QueueKey, deque[Waiter]] = attrs.field(factory=dict)
    _by_model: dict[str, set[QueueKey]] = attrs.field(factory=dict)
    _seq: Iterator[int] = attrs.field(factory=itertools.count)
    _live: int = 0
    _held: bool = False
    inspections: int = 0
    """Waiters looked at by `ready()` so far (the scheduler's unit of work; tests bound it)."""

    def __len__(self) -> int:
        return self._live

    def add(self, waiter: Waiter) -> None:
        model = canonical(waiter.request.model)
        waiter.key = (model, waiter.backend, waiter.exclude)
        waiter.seq = next(self._seq)
        queue = self._queues.get(waiter.key)
        if queue is None:
            queue = self._queues[waiter.key] = deque()
            self._by_model.setdefault(model, set()).add(waiter.key)
        queue.append(waiter)
        waiter.queued = True
        self._live += 1

    def waiting(self, waiter: Waiter) -> bool:
        """Whether requests like this one (same model and constraints) already wait."""
        key = (canonical(waiter.request.model), waiter.backend, waiter.exclude)
        return key in self._queues and self._head(key) is not None

    def left(self, waiter: Waiter) -> None:
        """A waiter's future was completed outside `pop()` (placed, failed or abandoned).

        It stays in its queue until it reaches the head (removing it from the middle costs the
        queue's length); a queue mostly made of such entries is compacted.
        """
        self._live -= 1
        queue = self._queues.get(waiter.key)
        if queue is not None and len(queue) > 32 and len(queue) > 2 * self._live_in(queue):
            live = deque(w for w in queue if not w.gone)
            if live:
                self._queues[waiter.key] = live
            else:
                self._drop(waiter.key)

    def _live_in(self, queue: deque[Waiter]) -> int:
        return sum(not w.gone for w in queue)

    def keys_for(self, nodes: Iterable[Node], models: Iterable[str] = ()) -> set[QueueKey]:
        """Queues that could use any of `nodes`, plus every queue for one of `models`."""
        keys: set[QueueKey] = set()
        for node in nodes:
            for key in self._keys_of({canonical(m) for m in node.models}):
                if (key[1] is None or key[1] == node.id) and node.id not in key[2]:
                    keys.add(key)
        keys.update(self._keys_of({canonical(m) for m in models}))
        return keys

    def _keys_of(self, names: set[str]) -> Iterator[QueueKey]:
        for name in names:
            yield from self._by_model.get(name, ())

    def all_keys(self) -> set[QueueKey]:
        return set(self._queues)

    def ready(self, keys: Iterable[QueueKey]) -> Iterator[tuple[Waiter, int]]:
        """The live heads of `keys`, oldest first, with their queue's live length.

        The caller either `pop()`s the head it was given (placed or failed) or `hold()`s the
        queue (its head must wait); either way the next item is the next oldest head.
        """
        heap: list[tuple[int, QueueKey]] = []
        for key in keys:
            head = self._head(key)
            if head is not None:
                heap.append((head.seq, key))
        heapq.heapify(heap)
        while heap:
            _seq, key = heapq.heappop(heap)
            head = self._head(key)
            if head is None:
                continue
            self.inspections += 1
            self._held = False
            yield head, self._live_in_head(key)
            if self._held:
                continue
            nxt = self._head(key)
            if nxt is not None:
                heapq.heappush(heap, (nxt.seq, key))

    def hold(self) -> None:
        """The head just yielded by `ready()` waits: skip its queue for the rest of that pass."""
        self._held = True

    def pop(self, waiter: Waiter) -> None:
        """Take the head just yielded by `ready()` out of its queue (it is placed or failed)."""
        queue = self._queues.get(waiter.key)
        if queue and queue[0] is waiter:
            queue.popleft()
            self._live -= 1
            if not queue:
                self._drop(waiter.key)

    def _live_in_head(self, key: QueueKey) -> int:
        # the head is live; an estimate of the rest is enough for the balancer's `queued`
        return max(1, min(len(self._queues[key]), self._live))

    def _head(self, key: QueueKey) -> Waiter | None:
        """The first live waiter of a queue, dropping finished ones (each is dropped once)."""
        queue = self._queues.get(key)
        while queue:
            if not queue[0].gone:
                return queue[0]
            queue.popleft()
        if queue is not None:
            self._drop(key)
        return None

    def _drop(self, key: QueueKey) -> None:
        self._queues.pop(key, None)
        keys = self._by_model.get(key[0])
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_model[key[0]]

    def drain(self) -> list[Waiter]:
        """Every live waiter, emptying the queues (the pool is stopping)."""
        out = [w for q in self._queues.values() for w in q if not w.gone]
        self._queues.clear()
        self._by_model.clear()
        self._live = 0
        return out

    def __iter__(self) -> Iterator[Waiter]:
        return (w for q in list(self._queues.values()) for w in q if not w.gone)
