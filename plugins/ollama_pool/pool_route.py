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

from sollol.core.placement import Placement
from sollol.core.router import POOL
from sollol.errors import ModelNotFound, NoRouteAvailable, NotSupported, Overloaded
from sollol.models import Backend, HealthReport, ModelInfo, RouteRequest, RouteState
from sollol.routes import Lease, Outcome

from . import catalog, manage, placing, pool_members
from .balance import choose
from .index import NodeIndex
from .node import Node, model_names
from .node_discovery import base_url, pool_dialects
from .pool_settings import SETTINGS, PoolSettings
from .waiters import Waiter, WaitQueues, canonical

if TYPE_CHECKING:
    from sollol.config import Config
    from sollol.core.runtime import ClusterRuntime

log = logging.getLogger("sollol.pool")
_MAX_CACHED = 1024
"""Most models whose tables and metadata are kept (the least recently refreshed go first)."""

TOKENS_WEIGHT = 0.1


@attrs.define(eq=False)
class PoolRoute:
    """RouteProvider for task distribution (see sollol/routes.py for the contract)."""

    cluster: ClusterRuntime
    name: str = POOL
    settings: PoolSettings = attrs.field(init=False)
    nodes: dict[str, Node] = attrs.field(factory=dict)
    avg_tokens: float = 128.0
    _waiters: WaitQueues = attrs.field(factory=WaitQueues)
    draining: dict[str, Node] = attrs.field(factory=dict)
    """Removed nodes whose in-flight requests have not finished yet."""
    pinned: set[str] = attrs.field(factory=set)
    """Nodes an operator added: re-discovery and config reloads keep them."""
    removed: set[str] = attrs.field(factory=set)
    """Nodes an operator removed: re-discovery does not bring them back."""
    index: NodeIndex = attrs.field(init=False)
    _affinity: OrderedDict[str, tuple[str, float]] = attrs.field(factory=OrderedDict)
    _task: asyncio.Task[None] | None = None
    _stopping: bool = False
    _picks: int = 0
    _wake: asyncio.Event = attrs.field(factory=asyncio.Event)
    _info: dict[str, tuple[float, ModelInfo | None]] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        self.settings = PoolSettings.from_config(self.cluster.config)
        self.index = NodeIndex(self.nodes)

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
        for waiter in self._waiters.drain():
            waiter.future.set_exception(NoRouteAvailable("the pool is stopping"))

    async def probe(self, nodes: list[Node]) -> None:
        """Probe nodes concurrently (each in a worker thread), then apply the results."""
        timeout = self.settings.health_timeout
        reports = await asyncio.gather(*(asyncio.to_thread(self._check, n, timeout)
                                         for n in nodes))
        now = time.monotonic()
        changed = [node for node, report in zip(nodes, reports, strict=True)
                   if self.apply(node, report, now)]
        self._pump(changed, models=[m for n in changed for m in n.models])

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
        waiting = f", {len(self._waiters)} queued" if len(self._waiters) else ""
        up = sum(n.available(now) for n in self.nodes.values())
        return RouteState(POOL, tuple(n.state(now) for n in self.nodes.values()),
                          detail=f"{up}/{len(self.nodes)} nodes up{waiting}")

    async def acquire(self, request: RouteRequest, *, backend: str | None = None,
                      exclude: Collection[str] = ()) -> Lease:
        waiter = Waiter(request, self._resolve_backend(backend), frozenset(exclude),
                        asyncio.get_running_loop().create_future())
        self._require_servable(waiter)
        if not self._waiters.waiting(waiter):  # nobody is ahead: take a free slot now
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
        self._waiters.add(waiter)
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
            self._waiters.left(waiter)
            return None
        if future.cancelled() or future.exception() is not None:
            return None
        return future.result()  # type: ignore[return-value]

    def avg_wait(self) -> float:
        """Rough seconds until a slot frees, for Retry-After."""
        seconds = [n.request_seconds for n in self.nodes.values() if n.request_seconds]
        return min(seconds) if seconds else 1.0

    def find(self, ident: str) -> str | None:
        """The id of the node named by id, address or URL, or None."""
        if ident in self.nodes:
            return ident
        ident = ident.rstrip("/")
        for node in self.nodes.values():
            if ident in (node.backend.address, base_url(node.backend)):
                return node.id
        return None

    def _resolve_backend(self, backend: str | None) -> str | None:
        if backend is None:
            return None
        found = self.find(backend)
        if found is None:
            known = ", ".join(self.nodes) or "none"
            raise NoRouteAvailable(f"pool node {backend!r} is not configured (nodes: {known})")
        return found

    def now(self) -> float:
        return time.monotonic()

    def membership_changed(self) -> None:
        self.index.rebuild(time.monotonic())

    def wake(self, nodes: Collection[Node]) -> None:
        """Re-examine the requests waiting for these nodes (e.g. after they left)."""
        self._pump(nodes, models=[m for n in nodes for m in n.models])

    def _candidates(self, waiter: Waiter, now: float) -> list[Node]:
        if waiter.backend:
            node = self.nodes.get(waiter.backend)
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
        model = waiter.request.model
        if waiter.backend and waiter.backend not in self.nodes:
            raise NoRouteAvailable(f"pool node {waiter.backend} was removed")
        scope = [self.nodes[waiter.backend]] if waiter.backend else list(self.nodes.values())
        holders = [n for n in scope if n.has_model(model)]
        needs = waiter.request.needs
        able = [n for n in holders if not n.missing(model, needs)]
        if holders and not able:
            raise NotSupported(placing.unable_message(holders, model, needs))
        holders = able
        if scope and not holders and all(n.probed and n.healthy for n in scope):
            where = f"node {waiter.backend}" if waiter.backend else "any pool node"
            raise ModelNotFound(f"model '{model}' not found on {where}")
        if holders and all(n.id in waiter.exclude for n in holders if n.available(now)) \
                and any(n.available(now) for n in holders):
            raise NoRouteAvailable(f"no other pool node holds {model!r} "
                                   f"(already tried {', '.join(sorted(waiter.exclude))})")
        down = "; ".join(f"{n.id}: {n.detail}" for n in (holders or scope)) or "no nodes"
        raise NoRouteAvailable(f"no healthy pool node can serve {model!r} ({down})")

    def _pump(self, nodes: Collection[Node] = (), *, models: Collection[str] = (),
              everything: bool = False) -> None:
        """Place waiting requests, oldest first, looking only at the queues that could use
        `nodes` (or want one of `models`): a release wakes the heads that want that node."""
        if not self._waiters:
            return
        keys = (self._waiters.all_keys() if everything
                else self._waiters.keys_for(nodes, models))
        now = time.monotonic()
        for waiter, queued in self._waiters.ready(keys):
            node = self._place(waiter, now, queued=queued)
            if waiter.future.done():  # failed: nobody can serve it any more
                self._waiters.pop(waiter)
            elif node is None:
                self._waiters.hold()
            else:
                self._waiters.pop(waiter)
                waiter.future.set_result(self._lease(node, waiter.request))

    def _place(self, waiter: Waiter, now: float, queued: float) -> Node | None:
        if not waiter.backend and not waiter.exclude:  # the common case: from the table
            table = self.index.table(waiter.request.model, now, waiter.request.needs,
                                     avg_tokens=self.avg_tokens,
                                     cold_penalty=self.settings.cold_penalty)
            if table.order:
                key = waiter.request.conversation_key
                if key and key in self._affinity:
                    sticky = self.nodes.get(self._affinity[key][0])
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
        if self.nodes.get(node.id) is not node:  # removed while this request ran: it drained
            if node.in_flight == 0:
                self.draining.pop(node.id, None)
            return
        # the last node that can serve this model stays: ejecting it turns its errors into 503s
        holders = self.index.holders(request.model)
        others_up = not outcome.ok and any(n.available(now) for n in holders if n is not node)
        ejected = node.record(outcome, now, self.settings, may_eject=others_up)
        if ejected:
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
        self.index.mark(node, now, hard=ejected)
        self._pump((node,))

    def _remember(self, key: str, node_id: str, now: float) -> None:
        self._affinity[key] = (node_id, now)
        self._affinity.move_to_end(key)
        horizon = now - self.settings.affinity_seconds
        while self._affinity and (len(self._affinity) > 10_000
                                  or next(iter(self._affinity.values()))[1] < horizon):
            self._affinity.popitem(last=False)

    # ---- membership (the optional Membership interface of sollol/routes.py)

    @property
    def kinds(self) -> list[str]:
        """The backend kinds the pool serves (ours and other plugins' in a known dialect)."""
        return list(pool_dialects(self.cluster))

    async def add_backend(self, address: str) -> Mapping[str, Any]:
        return await pool_members.add(self, address)

    async def remove_backend(self, ident: str) -> Mapping[str, Any]:
        return pool_members.remove(self, ident)

    async def sync_backends(self, backends: Collection[Backend], *,
                            prune: bool) -> Mapping[str, list[str]]:
        return await pool_members.sync(self, backends, prune=prune)

    def reconfigure(self, config: Config) -> Collection[str]:
        """Take new settings live; returns the config keys that now apply."""
        old, self.settings = self.settings, PoolSettings.from_config(config)
        for node in self.nodes.values():
            if node.limit == old.concurrency and not (node.report and
                                                      node.report.extra.get("slots")):
                node.limit = self.settings.concurrency
        self.membership_changed()
        self._pump(everything=True)
        return (*(s.name for s in SETTINGS), "ollama_nodes", "health_interval")

    async def placement(self, request: RouteRequest) -> Placement:
        """Whether some node lists the model and can do what the request needs."""
        return placing.placement(self.nodes.values(), request)

    # ---- listings, model facts, management

    async def list_models(self) -> list[dict[str, Any]]:
        return catalog.tags(self.nodes.values())

    async def running(self) -> list[dict[str, Any]]:
        return catalog.running(self.nodes.values())

    async def model_info(self, model: str) -> ModelInfo | None:
        key = canonical(model)
        cached = self._info.get(key)
        if cached is not None and time.monotonic() - cached[0] < 300:
            return cached[1]
        info = await catalog.model_info(self.nodes.values(), model,
                                        timeout=self.settings.health_timeout * 2)
        if info is not None:
            self._info.pop(key, None)
            self._info[key] = (time.monotonic(), info)
            while len(self._info) > _MAX_CACHED:  # oldest first: dicts keep insertion order
                del self._info[next(iter(self._info))]
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
            "draining": [{**n.snapshot(now), "health": "removed", "url": base_url(n.backend)}
                         for n in self.draining.values()],
            "queue": {"waiting": len(self._waiters), "limit": self.settings.queue_size},
            "avg_tokens": round(self.avg_tokens, 1),
            "conversations": len(self._affinity),
        }
