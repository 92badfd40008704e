"""The "pool" route: leases on whole-model nodes, with health, balancing, queueing and affinity."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from sollol.errors import ModelNotFound, NoRouteAvailable, Overloaded
from sollol.models import HealthReport, ModelInfo, RouteRequest, RouteState
from sollol.router import POOL
from sollol.routes import Lease, Outcome

from . import catalog, manage
from .balance import choose
from .discovery import base_url, pool_dialects
from .node import Node, model_names
from .settings import PoolSettings

if TYPE_CHECKING:
    from sollol.cluster import Cluster

log = logging.getLogger("sollol.pool")
TOKENS_WEIGHT = 0.1


@attrs.define(eq=False)
class _Waiter:
    request: RouteRequest
    backend: str | None
    exclude: frozenset[str]
    future: asyncio.Future[Lease]


@attrs.define(eq=False)
class PoolRoute:
    """RouteProvider for task distribution (see sollol/routes.py for the contract)."""

    cluster: Cluster
    name: str = POOL
    settings: PoolSettings = attrs.field(init=False)
    nodes: dict[str, Node] = attrs.field(factory=dict)
    avg_tokens: float = 128.0
    _waiters: list[_Waiter] = attrs.field(factory=list)
    _affinity: OrderedDict[str, tuple[str, float]] = attrs.field(factory=OrderedDict)
    _task: asyncio.Task[None] | None = None
    _stopping: bool = False
    _picks: int = 0
    _wake: asyncio.Event = attrs.field(factory=asyncio.Event)
    _info: dict[str, tuple[float, ModelInfo | None]] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        self.settings = PoolSettings.from_config(self.cluster.config)

    # ---- lifecycle

    async def start(self) -> None:
        """Find the nodes, probe them all once, then keep probing in the background."""
        dialects = pool_dialects(self.cluster)
        backends = await asyncio.to_thread(self.cluster.discover, list(dialects))
        memory = self.settings.memory
        for backend in backends:
            declared = memory.get(backend.id, memory.get(backend.address))
            self.nodes[backend.id] = Node(backend, self.settings.concurrency, declared,
                                          api=dialects[backend.kind])
        await self.probe(list(self.nodes.values()))
        self._task = asyncio.create_task(self._health_loop(), name="sollol-pool-health")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._wake.set()
            try:  # the loop ends at its next check; a probe in flight takes <= its timeout
                await asyncio.wait({self._task}, timeout=self.settings.health_timeout * 2 + 1)
            finally:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        for waiter in self._waiters:
            if not waiter.future.done():
                waiter.future.set_exception(NoRouteAvailable("the pool is stopping"))
        self._waiters.clear()

    async def probe(self, nodes: list[Node]) -> None:
        """Probe nodes concurrently (each in a worker thread), then apply the results."""
        timeout = self.settings.health_timeout
        reports = await asyncio.gather(*(asyncio.to_thread(self._check, n, timeout)
                                         for n in nodes))
        now = time.monotonic()
        for node, report in zip(nodes, reports, strict=True):
            was = node.available(now)
            node.apply(report, now, self.settings)
            if was != node.available(now):
                log.info("pool node %s is %s: %s", node.id,
                         "up" if node.available(now) else "down", node.detail)
        self._pump()

    def _check(self, node: Node, timeout: float) -> HealthReport:
        try:
            report = self.cluster.pm.hook.sollol_check_health(backend=node.backend,
                                                              timeout=timeout)
        except Exception as exc:  # a probe hook must not take the pool down
            log.exception("health probe of %s failed", node.id)
            return HealthReport(node.id, healthy=False, detail=f"probe error: {exc}")
        return report or HealthReport(node.id, healthy=False, detail="no probe for this kind")

    async def _health_loop(self) -> None:
        while not self._stopping:
            self._wake.clear()  # before probing: a stop or a failure reported meanwhile counts
            now = time.monotonic()
            due = [n for n in self.nodes.values() if now >= n.next_probe]
            if due:
                await self.probe(due)
            upcoming = min((n.next_probe for n in self.nodes.values()), default=now + 1.0)
            pause = min(max(upcoming - time.monotonic(), 0.02), self.settings.health_interval)
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._wake.wait()

    # ---- routing

    def state(self) -> RouteState:
        now = time.monotonic()
        waiting = f", {len(self._waiters)} queued" if self._waiters else ""
        up = sum(n.available(now) for n in self.nodes.values())
        return RouteState(POOL, tuple(n.state(now) for n in self.nodes.values()),
                          detail=f"{up}/{len(self.nodes)} nodes up{waiting}")

    async def acquire(self, request: RouteRequest, *, backend: str | None = None,
                      exclude: Collection[str] = ()) -> Lease:
        waiter = _Waiter(request, self._resolve_backend(backend), frozenset(exclude),
                         asyncio.get_running_loop().create_future())
        self._require_servable(waiter)
        if not self._waiters:  # nobody is ahead: take a free slot without queueing
            node = self._place(waiter, time.monotonic(), queued=1)
            if node is not None:
                return self._lease(node, request)
        if len(self._waiters) >= self.settings.queue_size:
            # no room to wait for a faster node: a free slot anywhere beats a 429
            node = self._place(waiter, time.monotonic(), queued=math.inf)
            if node is not None:
                return self._lease(node, request)
            limit = self.settings.queue_size
            raise Overloaded(f"the pool's queue is full ({limit} requests may wait and every "
                             f"node holding {request.model!r} is busy)",
                             retry_after=max(1.0, self.avg_wait()))
        self._waiters.append(waiter)
        self._pump()
        try:
            async with asyncio.timeout(self.settings.queue_timeout):
                return await asyncio.shield(waiter.future)
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

    def _abandon(self, waiter: _Waiter) -> Lease | None:
        """Take a waiter out of the queue; return its lease if it was placed meanwhile."""
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        future = waiter.future
        if not future.done():
            future.cancel()
            return None
        if future.cancelled() or future.exception() is not None:
            return None
        return future.result()

    def avg_wait(self) -> float:
        """Rough seconds until a slot frees, for Retry-After."""
        seconds = [n.request_seconds for n in self.nodes.values() if n.request_seconds]
        return min(seconds) if seconds else 1.0

    def _resolve_backend(self, backend: str | None) -> str | None:
        if backend is None or backend in self.nodes:
            return backend
        for node in self.nodes.values():
            if backend in (node.backend.address, base_url(node.backend)):
                return node.id
        known = ", ".join(self.nodes) or "none"
        raise NoRouteAvailable(f"pool node {backend!r} is not configured (nodes: {known})")

    def _candidates(self, waiter: _Waiter, now: float) -> list[Node]:
        model = waiter.request.model
        nodes = ([self.nodes[waiter.backend]] if waiter.backend else self.nodes.values())
        return [n for n in nodes if n.available(now) and n.has_model(model)
                and n.id not in waiter.exclude]

    def _require_servable(self, waiter: _Waiter) -> None:
        """Fail now (not after a queue timeout) when no node could ever take the request."""
        now = time.monotonic()
        if self._candidates(waiter, now):
            return
        model = waiter.request.model
        scope = [self.nodes[waiter.backend]] if waiter.backend else list(self.nodes.values())
        holders = [n for n in scope if n.has_model(model)]
        if scope and not holders and all(n.probed and n.healthy for n in scope):
            where = f"node {waiter.backend}" if waiter.backend else "any pool node"
            raise ModelNotFound(f"model '{model}' not found on {where}")
        if holders and all(n.id in waiter.exclude for n in holders if n.available(now)) \
                and any(n.available(now) for n in holders):
            raise NoRouteAvailable(f"no other pool node holds {model!r} "
                                   f"(already tried {', '.join(sorted(waiter.exclude))})")
        down = "; ".join(f"{n.id}: {n.detail}" for n in (holders or scope)) or "no nodes"
        raise NoRouteAvailable(f"no healthy pool node can serve {model!r} ({down})")

    def _pump(self) -> None:
        """Place waiting requests on free nodes, in arrival order."""
        now = time.monotonic()
        for index, waiter in enumerate(list(self._waiters)):
            if waiter.future.done():
                self._waiters.remove(waiter)
                continue
            node = self._place(waiter, now, queued=len(self._waiters) - index)
            if node is None:
                continue
            self._waiters.remove(waiter)
            waiter.future.set_result(self._lease(node, waiter.request))

    def _place(self, waiter: _Waiter, now: float, queued: int) -> Node | None:
        candidates = self._candidates(waiter, now)
        if not candidates:
            try:
                self._require_servable(waiter)
            except (ModelNotFound, NoRouteAvailable) as exc:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                    waiter.future.set_exception(exc)
            return None
        key = waiter.request.conversation_key
        if key and key in self._affinity:
            node_id, _ = self._affinity[key]
            sticky = next((n for n in candidates if n.id == node_id), None)
            if sticky is not None and sticky.in_flight < sticky.limit:
                return sticky
        choice = choose(candidates, waiter.request.model, queued=queued,
                        avg_tokens=self.avg_tokens, cold_penalty=self.settings.cold_penalty)
        return choice.node

    def _lease(self, node: Node, request: RouteRequest) -> Lease:
        node.in_flight += 1
        self._picks += 1
        node.last_pick = self._picks

        def release(outcome: Outcome) -> None:
            self._released(node, request, outcome)

        return Lease(route=POOL, backend=node.backend, base_url=base_url(node.backend),
                     api="openai" if node.api == "openai" else "ollama", on_release=release)

    def _released(self, node: Node, request: RouteRequest, outcome: Outcome) -> None:
        now = time.monotonic()
        node.in_flight = max(0, node.in_flight - 1)
        # the last node that can serve this model stays: ejecting it turns its errors into 503s
        others_up = any(n.available(now) and n.has_model(request.model)
                        for n in self.nodes.values() if n is not node)
        if node.record(outcome, now, self.settings, may_eject=others_up):
            log.warning("pool node %s ejected: %s", node.id, node.detail)
        elif outcome.connect_failed:
            node.next_probe = now  # the last node standing: find out now whether it is down
            self._wake.set()
        if outcome.ok:
            if outcome.tokens:
                self.avg_tokens += TOKENS_WEIGHT * (outcome.tokens - self.avg_tokens)
            node.loaded = node.loaded | model_names(request.model)
            if request.conversation_key:
                self._remember(request.conversation_key, node.id, now)
        self._pump()

    def _remember(self, key: str, node_id: str, now: float) -> None:
        self._affinity[key] = (node_id, now)
        self._affinity.move_to_end(key)
        horizon = now - self.settings.affinity_seconds
        while self._affinity and (len(self._affinity) > 10_000
                                  or next(iter(self._affinity.values()))[1] < horizon):
            self._affinity.popitem(last=False)

    # ---- listings, model facts, management

    async def list_models(self) -> list[dict[str, Any]]:
        return catalog.tags(self.nodes.values())

    async def running(self) -> list[dict[str, Any]]:
        return catalog.running(self.nodes.values())

    async def model_info(self, model: str) -> ModelInfo | None:
        cached = self._info.get(model)
        if cached is not None and time.monotonic() - cached[0] < 300:
            return cached[1]
        info = await catalog.model_info(self.nodes.values(), model,
                                        timeout=self.settings.health_timeout * 2)
        if info is not None:
            self._info[model] = (time.monotonic(), info)
        return info

    def pull(self, model: str, nodes: Collection[str] | None = None,
             insecure: bool = False) -> AsyncIterator[dict[str, Any]]:
        """Pull on every healthy Ollama node (or the named ones): aggregated progress."""
        body = {"model": model, "stream": True, **({"insecure": True} if insecure else {})}
        return manage.progress(self, "/api/pull", body, nodes)

    def push(self, model: str, nodes: Collection[str] | None = None,
             insecure: bool = False) -> AsyncIterator[dict[str, Any]]:
        """Push from every healthy Ollama node (or the named ones): aggregated progress."""
        body = {"model": model, "stream": True, **({"insecure": True} if insecure else {})}
        return manage.progress(self, "/api/push", body, nodes)

    def create(self, body: Mapping[str, Any], nodes: Collection[str] | None = None,
               ) -> AsyncIterator[dict[str, Any]]:
        return manage.progress(self, "/api/create", {**body, "stream": True}, nodes)

    async def upload_blobs(self, blobs: Mapping[str, Path],
                           nodes: Collection[str] | None = None) -> dict[str, list[str]]:
        """Send each blob (digest -> file) to the target nodes that lack it."""
        return await manage.upload_blobs(self, blobs, nodes)

    async def delete(self, model: str, nodes: Collection[str] | None = None,
                     ) -> dict[str, Any]:
        return await manage.fan_out(self, "DELETE", "/api/delete", {"model": model}, nodes)

    async def copy(self, source: str, destination: str,
                   nodes: Collection[str] | None = None) -> dict[str, Any]:
        body = {"source": source, "destination": destination}
        return await manage.fan_out(self, "POST", "/api/copy", body, nodes)

    def snapshot(self) -> Mapping[str, Any]:
        now = time.monotonic()
        return {
            "route": POOL,
            "nodes": [{**n.snapshot(now), "url": base_url(n.backend)}
                      for n in self.nodes.values()],
            "queue": {"waiting": len(self._waiters), "limit": self.settings.queue_size},
            "avg_tokens": round(self.avg_tokens, 1),
            "conversations": len(self._affinity),
        }
