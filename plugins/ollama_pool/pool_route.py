"""The "pool" route: leases on whole-model nodes, with health, balancing, queueing and affinity.

PoolRoute composes three objects, each owning its state: the member table (`PoolMembers`: who
is in the pool, joins and leaves), the scheduler (`PoolScheduler`: who serves a request, the
wait queues, leases and their outcomes) and model management (`ModelManager`: pull, push,
create, delete, copy on the nodes). The route itself runs the health loop that probes the
members and hands each result to the scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from sollol.errors import SollolError
from sollol.models import Backend, HealthReport, ModelInfo, RouteRequest, RouteState
from sollol.routes import POOL, Lease, Placement

from . import catalog, placing
from .manage import ModelManager
from .node import Node
from .node_discovery import KINDS, pool_dialects
from .node_probe import Prober
from .pool_members import PoolMembers
from .pool_scheduler import PoolScheduler
from .pool_settings import SETTINGS, PoolSettings
from .waiters import canonical

if TYPE_CHECKING:
    from sollol.config import Config
    from sollol.core.runtime import ClusterRuntime

log = logging.getLogger("sollol.pool")
_MAX_CACHED = 1024
"""Most models whose tables and metadata are kept (the least recently refreshed go first)."""
PROBE_SLACK = 0.05
"""A node due within this share of `health_interval` is probed with the nodes due now."""


@attrs.define(eq=False)
class PoolRoute:
    """RouteProvider for task distribution (see sollol/routes.py for the contract)."""

    cluster: ClusterRuntime
    name: str = POOL
    settings: PoolSettings = attrs.field(init=False)
    members: PoolMembers = attrs.field(init=False)
    scheduler: PoolScheduler = attrs.field(init=False)
    management: ModelManager = attrs.field(init=False)
    _task: asyncio.Task[None] | None = None
    _stopping: bool = False
    _wake: asyncio.Event = attrs.field(factory=asyncio.Event)
    _info: dict[str, tuple[float, ModelInfo | None]] = attrs.field(factory=dict)
    _prober: Prober = attrs.field(init=False)
    _probing: dict[str, asyncio.Task[None]] = attrs.field(factory=dict)
    """Background probes in flight, by node id (at most one per node)."""

    def __attrs_post_init__(self) -> None:
        self.settings = PoolSettings.from_config(self.cluster.config)
        # the member table tells the scheduler of joins and leaves; both read the same nodes
        self.members = PoolMembers(self.settings, lambda: pool_dialects(self.cluster),
                                   probe=self.probe, changed=self._members_changed,
                                   live=getattr(self.cluster, "live_memory", None))
        self.scheduler = PoolScheduler(self.members, self.settings, probe_soon=self._probe_soon)
        self.management = ModelManager(self.members.nodes, self.settings, refresh=self.probe)
        self._prober = Prober(self.settings.health_interval, family_of=self._family_of)

    @property
    def nodes(self) -> dict[str, Node]:
        """The member nodes by id (the member table's own dict)."""
        return self.members.nodes

    def now(self) -> float:
        return time.monotonic()

    # ---- lifecycle

    async def start(self) -> None:
        """Find the nodes, probe them all once, then keep probing in the background."""
        dialects = pool_dialects(self.cluster)
        backends = await asyncio.to_thread(self.cluster.discover, list(dialects))
        await self.members.join(backends)
        self._task = asyncio.create_task(self._health_loop(), name="sollol-pool-health")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._wake.set()
            try:  # the loop ends at its next check; it never waits for a probe
                await asyncio.wait({self._task}, timeout=self.settings.health_timeout * 2 + 1)
            finally:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        probing = list(self._probing.values())
        for task in probing:
            task.cancel()
        await asyncio.gather(*probing, return_exceptions=True)
        await self._prober.close()
        self.scheduler.stop()

    async def probe(self, nodes: list[Node]) -> None:
        """Probe nodes now, concurrently, then apply the results. A background probe of one of
        them still in flight started earlier: it is cancelled, its answer would be older."""
        for node in nodes:
            task = self._probing.pop(node.id, None)
            if task is not None:
                task.cancel()
        reports = await asyncio.gather(*(self._check(n) for n in nodes))
        now = time.monotonic()
        changed = [node for node, report in zip(nodes, reports, strict=True)
                   if self.scheduler.apply(node, report, now)]
        self.scheduler.wake(changed)

    async def _family_of(self, name: str) -> str | None:
        """The architecture of the GGUF `name` resolves to among the operator's own files."""
        try:
            info = await self.cluster.model_info(name)
        except (OSError, ValueError, SollolError):
            return None
        return info.architecture if info is not None else None

    async def _check(self, node: Node) -> HealthReport:
        """Our kinds: the shared prober, on this loop. Another plugin's kind that the pool
        serves: its `sollol_check_health` hook, in a worker thread."""
        try:
            if node.backend.kind in KINDS:
                return await self._prober.check(node.backend, self.settings.health_timeout)
            report = await asyncio.to_thread(self.cluster.pm.hook.sollol_check_health,
                                             backend=node.backend,
                                             timeout=self.settings.health_timeout)
        except Exception as exc:  # a probe hook must not take the pool down
            log.exception("health probe of %s failed", node.id)
            return HealthReport(node.id, healthy=False, detail=f"probe error: {exc}")
        return report or HealthReport(node.id, healthy=False, detail="no probe for this kind")

    async def _probe_in_background(self, node: Node) -> None:
        try:
            report = await self._check(node)
        finally:
            if self._probing.get(node.id) is asyncio.current_task():
                del self._probing[node.id]
        if self.nodes.get(node.id) is not node:
            return  # removed while it was probed
        if self.scheduler.apply(node, report, time.monotonic()):
            self.scheduler.wake([node])

    async def _health_loop(self) -> None:
        """Start each due node's probe as a task of its own and never wait for one: a hung
        node holds only its own next probe (at most `pool_health_timeout` late)."""
        while not self._stopping:
            self._wake.clear()  # before looking: a stop or a failure reported meanwhile counts
            now = time.monotonic()
            upcoming = now + self.settings.health_interval
            # nodes due within the slack go now too: probed together, they come due together
            # again, so the loop wakes a few times per interval, not once per node
            soon = now + PROBE_SLACK * self.settings.health_interval
            for node in self.nodes.values():
                if node.id in self._probing:
                    continue
                # (an ejected node's probe waits for the ejection's end: it readmits only then)
                if (now if node.readmit_pending else soon) >= node.next_probe:
                    self._probing[node.id] = asyncio.create_task(
                        self._probe_in_background(node), name=f"sollol-probe-{node.id}")
                else:
                    upcoming = min(upcoming, node.next_probe)
            self._prober.retain(self.nodes)
            pause = max(upcoming - time.monotonic(), 0.02)
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._wake.wait()

    def _probe_soon(self, node: Node) -> None:
        """Probe `node` at the health loop's next turn, which starts now."""
        node.next_probe = time.monotonic()
        self._wake.set()

    def _members_changed(self, gone: Collection[Node]) -> None:
        self.scheduler.members_changed(gone)

    # ---- routing

    def state(self) -> RouteState:
        now = time.monotonic()
        queued = len(self.scheduler.waiters)
        waiting = f", {queued} queued" if queued else ""
        up = sum(n.available(now) for n in self.nodes.values())
        return RouteState(POOL, tuple(n.state(now) for n in self.nodes.values()),
                          detail=f"{up}/{len(self.nodes)} nodes up{waiting}")

    async def acquire(self, request: RouteRequest, *, backend: str | None = None,
                      exclude: Collection[str] = ()) -> Lease:
        return await self.scheduler.acquire(request, backend=backend, exclude=exclude)

    async def placement(self, request: RouteRequest) -> Placement:
        """Whether some node lists the model and can do what the request needs."""
        return placing.placement(self.nodes.values(), request)

    # ---- membership (the optional Membership interface of sollol/routes.py)

    @property
    def kinds(self) -> list[str]:
        """The backend kinds the pool serves (ours and other plugins' in a known dialect)."""
        return self.members.kinds

    async def add_backend(self, address: str) -> Mapping[str, Any]:
        return await self.members.add(address)

    async def remove_backend(self, ident: str) -> Mapping[str, Any]:
        return self.members.remove(ident)

    async def sync_backends(self, backends: Collection[Backend], *,
                            prune: bool) -> Mapping[str, list[str]]:
        return await self.members.sync(backends, prune=prune)

    def reconfigure(self, config: Config) -> Collection[str]:
        """Take new settings live; returns the config keys that now apply."""
        self.settings = settings = PoolSettings.from_config(config)
        self.members.reconfigure(settings)  # node limits first: the scheduler re-places by them
        self.scheduler.reconfigure(settings)
        self.management.settings = settings
        return (*(s.name for s in SETTINGS), "ollama_nodes", "health_interval")

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

    # model management: the gateway calls these by name (sollol/gateway/model_management.py)

    def pull(self, model: str, nodes: Collection[str] | None = None,
             insecure: bool = False) -> AsyncIterator[dict[str, Any]]:
        """Pull on every healthy Ollama node (or the named ones): aggregated progress."""
        return self.management.pull(model, nodes, insecure)

    def push(self, model: str, nodes: Collection[str] | None = None,
             insecure: bool = False) -> AsyncIterator[dict[str, Any]]:
        """Push from every healthy Ollama node (or the named ones): aggregated progress."""
        return self.management.push(model, nodes, insecure)

    def create(self, body: Mapping[str, Any], nodes: Collection[str] | None = None,
               ) -> AsyncIterator[dict[str, Any]]:
        return self.management.create(body, nodes)

    async def upload_blobs(self, blobs: Mapping[str, Path],
                           nodes: Collection[str] | None = None) -> dict[str, list[str]]:
        """Send each blob (digest -> file) to the target nodes that lack it."""
        return await self.management.upload_blobs(blobs, nodes)

    async def delete(self, model: str, nodes: Collection[str] | None = None,
                     ) -> dict[str, Any]:
        return await self.management.delete(model, nodes)

    async def copy(self, source: str, destination: str,
                   nodes: Collection[str] | None = None) -> dict[str, Any]:
        return await self.management.copy(source, destination, nodes)

    def snapshot(self) -> Mapping[str, Any]:
        return {"route": POOL, **self.members.snapshot(time.monotonic()),
                **self.scheduler.snapshot()}
