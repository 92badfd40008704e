"""The pool's scheduler: which member node takes a request, now or after waiting in a queue.

A request takes a free slot at once when nobody like it waits; otherwise it queues, and every
change that can free a slot for it (a release, a probe, a node joining or leaving) places the
oldest waiting requests that the change can help. A lease's outcome feeds the node's health and
speed, the conversation's affinity and the average reply length the balancer plans with.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from typing import Any

import attrs

from sollol.errors import ModelNotFound, NoRouteAvailable, NotSupported, Overloaded
from sollol.models import HealthReport, RouteRequest
from sollol.routes import POOL, Lease, Outcome

from . import placing
from .balance import choose
from .index import NodeIndex
from .node import Node, model_names
from .node_discovery import base_url
from .pool_members import PoolMembers
from .pool_settings import PoolSettings
from .waiters import Waiter, WaitQueues

log = logging.getLogger("sollol.pool")

TOKENS_WEIGHT = 0.1
"""Weight of the newest reply in the average reply length (in tokens)."""
MAX_CONVERSATIONS = 10_000
"""Conversations whose node is remembered at once (the least recent are forgotten first)."""


@attrs.define(eq=False)
class PoolScheduler:
    """Leases on the member nodes of `members`: placement, wait queues and outcomes."""

    members: PoolMembers
    settings: PoolSettings
    probe_soon: Callable[[Node], None]
    """Asks for a probe of a node now (the last node holding a model failed to connect)."""
    avg_tokens: float = 128.0
    waiters: WaitQueues = attrs.field(factory=WaitQueues)
    index: NodeIndex = attrs.field(init=False)
    _affinity: OrderedDict[str, tuple[str, float]] = attrs.field(factory=OrderedDict)
    _picks: int = 0

    def __attrs_post_init__(self) -> None:
        self.index = NodeIndex(self.members.nodes)

    # ---- requests

    async def acquire(self, request: RouteRequest, *, backend: str | None = None,
                      exclude: Collection[str] = ()) -> Lease:
        waiter = Waiter(request, self._resolve_backend(backend), frozenset(exclude),
                        asyncio.get_running_loop().create_future())
        self._require_servable(waiter)
        if not self.waiters.waiting(waiter):  # nobody is ahead: take a free slot now
            node = self._place(waiter, time.monotonic(), queued=1)
            if node is not None:
                return self._lease(node, request)
        if len(self.waiters) >= self.settings.queue_size:
            # no room to wait for a faster node: a free slot anywhere beats a 429
            node = self._place(waiter, time.monotonic(), queued=math.inf)
            if node is not None:
                return self._lease(node, request)
            limit = self.settings.queue_size
            raise Overloaded(f"the pool's queue is full ({limit} requests may wait and every "
                             f"node holding {request.model!r} is busy)",
                             retry_after=max(1.0, self.avg_wait()))
        self.waiters.add(waiter)
        self._pump(models=[request.model])
        try:
            async with asyncio.timeout(self.settings.queue_timeout):
                return await asyncio.shield(waiter.future)  # type: ignore[return-value]
        except TimeoutError:
            lease = self._abandon(waiter)
            if lease is not None:
                return lease  # placed in the same instant the wait timed out
            raise Overloaded(f"no pool node was free for {request.model!r} within "
                             f"{self.settings.queue_timeout:g}s", retry_after=5.0) from None
        except asyncio.CancelledError:
            lease = self._abandon(waiter)
            if lease is not None:
                lease.release(Outcome(False, 499, "client gave up while queued"))
            raise

    def _abandon(self, waiter: Waiter) -> Lease | None:
        """Take a waiter out of the queue; return its lease if it was placed meanwhile."""
        future = waiter.future
        if not future.done():
            future.cancel()
            self.waiters.left(waiter)
            return None
        if future.cancelled() or future.exception() is not None:
            return None
        return future.result()  # type: ignore[return-value]

    def avg_wait(self) -> float:
        """Rough seconds until a slot frees, for Retry-After."""
        seconds = [n.request_seconds for n in self.members.nodes.values() if n.request_seconds]
        return min(seconds) if seconds else 1.0

    def _resolve_backend(self, backend: str | None) -> str | None:
        if backend is None:
            return None
        found = self.members.find(backend)
        if found is None:
            known = ", ".join(self.members.nodes) or "none"
            raise NoRouteAvailable(f"pool node {backend!r} is not configured (nodes: {known})")
        return found

    def stop(self) -> None:
        """Fail every waiting request: the pool is stopping."""
        for waiter in self.waiters.drain():
            waiter.future.set_exception(NoRouteAvailable("the pool is stopping"))

    # ---- what changed

    def apply(self, node: Node, report: HealthReport, now: float) -> bool:
        """Take one probe's result; True when it may change who can serve what."""
        was, models = node.available(now), node.models
        node.apply(report, now, self.settings)
        if node.models != models:
            self.index.models_changed()
        if was != node.available(now):
            log.info("pool node %s is %s: %s", node.id,
                     "up" if node.available(now) else "down", node.detail)
            if node.available(now) and node.served:  # it served before: ramp it up
                node.begin_warmup(now, self.settings.warmup_seconds)
        moved = node.models != models or was != node.available(now)
        self.index.mark(node, now, hard=moved)
        return moved or node.warming

    def wake(self, nodes: Collection[Node]) -> None:
        """Re-examine the requests waiting for these nodes (e.g. after they left)."""
        self._pump(nodes, models=[m for n in nodes for m in n.models])

    def members_changed(self, gone: Collection[Node] = ()) -> None:
        """Nodes joined or left (`gone`): re-index, and fail or re-place who waited for those."""
        self.index.rebuild(time.monotonic())
        self.wake(gone)

    def reconfigure(self, settings: PoolSettings) -> None:
        """Take new settings (queue limits, penalties) and node limits: re-place every waiter."""
        self.settings = settings
        self.index.rebuild(time.monotonic())
        self._pump(everything=True)

    # ---- placing

    def _candidates(self, waiter: Waiter, now: float) -> list[Node]:
        if waiter.backend:
            node = self.members.nodes.get(waiter.backend)
            nodes = [node] if node is not None and node.has_model(waiter.request.model) else []
        else:
            nodes = self.index.holders(waiter.request.model)
        needs = waiter.request.needs
        return [n for n in nodes if n.available(now) and n.id not in waiter.exclude
                and not n.missing(waiter.request.model, needs)]

    def _require_servable(self, waiter: Waiter) -> None:
        """Fail now (not after a queue timeout) when no node could ever take the request."""
        now = time.monotonic()
        if self._candidates(waiter, now):
            return
        nodes = self.members.nodes
        if waiter.backend and waiter.backend not in nodes:
            raise NoRouteAvailable(f"pool node {waiter.backend} was removed")
        scope = [nodes[waiter.backend]] if waiter.backend else list(nodes.values())
        raise placing.unservable(scope, waiter, now)

    def _pump(self, nodes: Collection[Node] = (), *, models: Collection[str] = (),
              everything: bool = False) -> None:
        """Place waiting requests, oldest first, looking only at the queues that could use
        `nodes` (or want one of `models`): a release wakes the heads that want that node."""
        if not self.waiters:
            return
        keys = (self.waiters.all_keys() if everything
                else self.waiters.keys_for(nodes, models))
        now = time.monotonic()
        for waiter, queued in self.waiters.ready(keys):
            node = self._place(waiter, now, queued=queued)
            if waiter.future.done():  # failed: nobody can serve it any more
                self.waiters.pop(waiter)
            elif node is None:
                self.waiters.hold()
            else:
                self.waiters.pop(waiter)
                waiter.future.set_result(self._lease(node, waiter.request))

    def _place(self, waiter: Waiter, now: float, queued: float) -> Node | None:
        if not waiter.backend and not waiter.exclude:  # the common case: from the table
            table = self.index.table(waiter.request.model, now, waiter.request.needs,
                                     avg_tokens=self.avg_tokens,
                                     cold_penalty=self.settings.cold_penalty)
            if table.order:
                key = waiter.request.conversation_key
                if key and key in self._affinity:
                    sticky = self.members.nodes.get(self._affinity[key][0])
                    if sticky in self.index.free and sticky in table.times:
                        return sticky
                return table.decide(self.index.free, queued)
        candidates = self._candidates(waiter, now)
        if not candidates:
            try:
                self._require_servable(waiter)
            except (ModelNotFound, NoRouteAvailable, NotSupported) as exc:
                if waiter.queued and not waiter.future.done():
                    waiter.future.set_exception(exc)
            return None
        key = waiter.request.conversation_key
        if key and key in self._affinity:
            node_id, _ = self._affinity[key]
            sticky = next((n for n in candidates if n.id == node_id), None)
            if sticky is not None and sticky.in_flight < sticky.cap:
                return sticky
        choice = choose(candidates, waiter.request.model, queued=queued,
                        avg_tokens=self.avg_tokens, cold_penalty=self.settings.cold_penalty)
        return choice.node

    # ---- leases

    def _lease(self, node: Node, request: RouteRequest) -> Lease:
        node.in_flight += 1
        self._picks += 1
        node.last_pick = self._picks
        if node.in_flight >= node.cap:
            self.index.free.discard(node)

        def release(outcome: Outcome) -> None:
            self._released(node, request, outcome)

        backend = node.backend
        if node.server and backend.labels.get("server") != node.server:
            backend = attrs.evolve(backend, labels={**backend.labels, "server": node.server})
        return Lease(route=POOL, backend=backend, base_url=base_url(node.backend),
                     api="openai" if node.api == "openai" else "ollama", on_release=release)

    def _released(self, node: Node, request: RouteRequest, outcome: Outcome) -> None:
        now = time.monotonic()
        node.in_flight = max(0, node.in_flight - 1)
        if outcome.unsupported is not None:
            node.learn_lack(request.model, outcome.unsupported)
            self.index.force()  # placement tables must see the missing capability at once
        if not self.members.is_member(node):  # removed while this request ran: it drains
            self.members.drained(node)
            return
        # the last node that can serve this model stays: ejecting it turns its errors into 503s
        holders = self.index.holders(request.model)
        others_up = not outcome.ok and any(n.available(now) for n in holders if n is not node)
        ejected = node.record(outcome, now, self.settings, may_eject=others_up)
        if ejected:
            log.warning("pool node %s ejected: %s", node.id, node.detail)
        elif outcome.connect_failed:
            self.probe_soon(node)  # the last node standing: find out now whether it is down
        if outcome.ok:
            if outcome.tokens:
                self.avg_tokens += TOKENS_WEIGHT * (outcome.tokens - self.avg_tokens)
            node.loaded = node.loaded | model_names(request.model)
            if request.conversation_key:
                self._remember(request.conversation_key, node.id, now)
        self.index.mark(node, now, hard=ejected)
        self._pump((node,))

    def _remember(self, key: str, node_id: str, now: float) -> None:
        self._affinity[key] = (node_id, now)
        self._affinity.move_to_end(key)
        horizon = now - self.settings.affinity_seconds
        while self._affinity and (len(self._affinity) > MAX_CONVERSATIONS
                                  or next(iter(self._affinity.values()))[1] < horizon):
            self._affinity.popitem(last=False)

    def snapshot(self) -> dict[str, Any]:
        """The queue, the average reply length and the conversations remembered, as plain data."""
        return {
            "queue": {"waiting": len(self.waiters), "limit": self.settings.queue_size},
            "avg_tokens": round(self.avg_tokens, 1),
            "conversations": len(self._affinity),
        }
