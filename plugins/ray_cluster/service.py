"""The gateway as a Ray driver: actors that follow the Ray cluster's nodes, as members.

One `RayMembers` per gateway. Every `ray_watch_interval` it looks at the cluster (a Ray driver
gets no push for node changes) and makes the actors match `plan.wanted`: an actor for each new
slot, a dead actor's or dead node's member out of the routes (the sharding route then drains
and restarts its coordinators on the rest, as for any member that leaves). A member whose
server exits is dropped and its actor killed; the next look starts a fresh one. Every Ray call
runs in a worker thread (`asyncio.to_thread`): the Ray API blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import attrs

from sollol.core.live_memory import MemoryReading
from sollol.errors import PluginError
from sollol.models import Backend

from .plan import POOL, Slot, alive_nodes, wanted
from .settings import RaySettings

if TYPE_CHECKING:
    from sollol.core.runtime import ClusterRuntime

log = logging.getLogger("sollol.ray")
NAMESPACE = "sollol"
INSTALL_HINT = "the Ray plugin needs Ray on this machine: pip install 'sollol[ray]'"
MAX_PAUSE = 60.0
QUICK_EXIT = 10.0
"""Seconds: a server that ends sooner after it started counts as a failed start (a pause)."""
STOP_WAIT = 15.0


def import_ray() -> Any:
    """The `ray` module, or PluginError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise PluginError(INSTALL_HINT) from None
    return ray


@attrs.define(eq=False)
class Member:
    """One actor the service runs: starting, then running (its info) until it ends."""

    slot: Slot
    actor: Any
    ref: Any
    """The pending `start()` call while starting, then the pending `watch()` call."""
    state: str = "starting"
    info: dict[str, Any] = attrs.field(factory=dict)
    since: float = attrs.field(factory=time.monotonic)

    def public(self) -> dict[str, Any]:
        return {"id": self.slot.backend_id, "kind": self.slot.kind, "state": self.state,
                "node_id": self.info.get("node_id", self.slot.node_id), "model": self.slot.model,
                **{k: self.info[k] for k in ("address", "ip", "pid", "devices", "log")
                   if k in self.info},
                "for_seconds": round(time.monotonic() - self.since, 1)}


@attrs.define(eq=False)
class RayMembers:
    """The gateway's actors on the Ray cluster, and their backends (read by discovery)."""

    cluster: ClusterRuntime
    settings: RaySettings
    gateway: str = attrs.field(factory=lambda: uuid.uuid4().hex[:8])
    backends: tuple[Backend, ...] = ()
    members: dict[str, Member] = attrs.field(factory=dict)
    failures: dict[Slot, tuple[float, float, str]] = attrs.field(factory=dict)
    """slot -> (retry at, pause, error) for actors that failed to start."""
    nodes: list[dict[str, Any]] = attrs.field(factory=list)
    error: str | None = None
    connected: bool = False
    _ray: Any = None
    _owns_ray: bool = False
    _lock: threading.Lock = attrs.field(factory=threading.Lock)
    _stopping: asyncio.Event = attrs.field(factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Connect and watch in the background (inside the gateway's event loop)."""
        self._ray = import_ray()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sollol-ray")

    async def _run(self) -> None:
        while not self.connected:
            try:
                await asyncio.to_thread(self._connect)
            except Exception as exc:  # an unreachable cluster: say so and try again
                self.error = f"cannot connect to Ray at {self.settings.address}: {exc}"
                log.warning("%s", self.error)
                if await self._sleep(max(self.settings.watch_interval, 5.0)):
                    return
        while True:
            try:
                if await asyncio.to_thread(self.step):
                    await self._resync()
            except Exception:  # the watch must go on
                log.exception("ray: a look at the cluster failed")
            if await self._sleep(self.settings.watch_interval):
                return

    async def _sleep(self, seconds: float) -> bool:
        """Wait `seconds` or until stop; True when stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()

    def _connect(self) -> None:
        ray = self._ray
        if ray.is_initialized():  # someone in this process already drives a Ray cluster
            self._owns_ray = False
        else:
            ray.init(address=self.settings.address, namespace=NAMESPACE,
                     logging_level=logging.WARNING, log_to_driver=False)
            self._owns_ray = True
        self.connected, self.error = True, None
        log.info("ray: connected to %s as a driver (namespace %s)", self.settings.address,
                 NAMESPACE)

    # ---- one look at the cluster (in a worker thread)

    def step(self) -> bool:
        """Match the actors to the alive nodes; True when the running members changed."""
        ray = self._ray
        entries = ray.nodes()
        nodes = alive_nodes(entries)
        alive = {n.node_id for n in nodes}
        slots = {s.key: s for s in wanted(nodes, self.settings.rpc_per,
                                          self.settings.pool_models)}
        changed = False
        with self._lock:
            self.nodes = [{"node_id": e["NodeID"], "ip": e.get("NodeManagerAddress"),
                           "alive": bool(e.get("Alive")),
                           "resources": e.get("Resources") or {}} for e in entries]
            members = list(self.members.values())
        refs = [m.ref for m in members]
        done = set(ray.wait(refs, num_returns=len(refs), timeout=0)[0]) if refs else set()
        for member in members:
            slot = member.slot
            gone = slot.key not in slots or (slot.node_id is not None
                                              and slot.node_id not in alive)
            if member.ref in done:
                changed |= self._finished(member)
            elif gone:
                why = ("it is no longer wanted" if slot.key not in slots
                       else "its node left the Ray cluster")
                changed |= self._drop(member, why)
            elif member.state == "starting" and (time.monotonic() - member.since
                                                 > self.settings.start_timeout):
                self._failed(member, f"no answer within {self.settings.start_timeout:.0f} s")
        now = time.monotonic()
        with self._lock:  # a slot no longer wanted (its node left) has nothing to retry
            self.failures = {k: v for k, v in self.failures.items() if k.key in slots}
            failures = dict(self.failures)
        for key, slot in slots.items():
            retry = failures.get(slot)
            if key not in self.members and (retry is None or now >= retry[0]):
                self._launch(slot)
        return changed

    def _finished(self, member: Member) -> bool:
        """Its pending call ended: started (now running), failed to start, or its server ended."""
        ray = self._ray
        try:
            result = ray.get(member.ref)
        except Exception as exc:  # the actor died (killed, node lost) or start() raised
            result, error = None, _short(exc)
        else:
            error = None
        if member.state == "starting":
            if error is not None:
                self._failed(member, error)
                return False
            member.info, member.state, member.since = result, "running", time.monotonic()
            member.ref = member.actor.watch.remote()
            with self._lock:
                self.failures.pop(member.slot, None)
            log.info("ray: %s started at %s on node %s", member.slot.backend_id,
                     result["address"], result["ip"])
            return True
        why = error or f"its server exited with status {result}"
        changed = self._drop(member, why)
        if time.monotonic() - member.since < QUICK_EXIT:  # a crash loop waits, like a failure
            self._note_failure(member.slot, why)
        return changed

    def _drop(self, member: Member, why: str) -> bool:
        with self._lock:
            self.members.pop(member.slot.key, None)
        self._ray.kill(member.actor, no_restart=True)
        if member.state == "running":
            log.warning("ray: %s (%s) leaves: %s", member.slot.backend_id,
                        member.info.get("address"), why)
            return True
        return False

    def _failed(self, member: Member, error: str) -> None:
        self._drop(member, error)
        pause = self._note_failure(member.slot, error)
        log.warning("ray: %s could not start (again in %.0f s): %s", member.slot.backend_id,
                    pause, error)

    def _note_failure(self, slot: Slot, error: str) -> float:
        """Start `slot` again only after a pause that doubles (5 s up to MAX_PAUSE)."""
        with self._lock:
            pause = min(MAX_PAUSE, 2 * self.failures.get(slot, (0, 2.5, ""))[1])
            self.failures[slot] = (time.monotonic() + pause, pause, error)
        return pause

    def _launch(self, slot: Slot) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from .actors import LlamaServerActor, RpcServerActor

        ray, settings = self._ray, self.settings
        if slot.kind == POOL:
            actor = ray.remote(LlamaServerActor).options(
                name=slot.actor_name(self.gateway), num_cpus=settings.pool_cpus,
                scheduling_strategy="SPREAD", max_restarts=0).remote()
            ref = actor.start.remote(settings.llama_cpp_dir, slot.model, slot.path,
                                     _threads(settings.pool_cpus), settings.start_timeout)
        else:
            actor = ray.remote(RpcServerActor).options(
                name=slot.actor_name(self.gateway), num_cpus=settings.rpc_cpus,
                num_gpus=1 if slot.gpu else 0, max_restarts=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(slot.node_id, soft=False),
            ).remote()
            ref = actor.start.remote(settings.llama_cpp_dir, _threads(settings.rpc_cpus),
                                     slot.gpu, settings.start_timeout)
        with self._lock:
            self.members[slot.key] = Member(slot, actor, ref)

    # ---- routes

    async def _resync(self) -> None:
        """Hand the routes the running members now (adds and drops them live)."""
        with self._lock:
            running = [m for m in self.members.values() if m.state == "running"]
        backends = tuple(_backend(m) for m in running)
        memory = self.cluster.live_memory
        for gone in {b.id for b in self.backends} - {b.id for b in backends}:
            memory.forget(gone)
        for member in running:
            reading = _reading(member.info.get("devices") or [])
            if reading is not None:
                memory.report(member.slot.backend_id, reading)
        self.backends = backends
        try:
            await self.cluster.membership.rediscover(prune=True)
        except Exception:
            log.exception("ray: re-discovery after a membership change failed")

    # ---- stop and report

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._ray is not None and self.connected:
            await asyncio.to_thread(self._kill_all)
        self.backends = ()

    def _kill_all(self) -> None:
        """Kill every actor, wait until Ray says each is gone, then leave the cluster."""
        ray = self._ray
        with self._lock:
            members, self.members = list(self.members.values()), {}
        for member in members:
            ray.kill(member.actor, no_restart=True)
        refs = [m.ref for m in members]
        if refs:  # each call ends with the actor's death (its server dies with it)
            ray.wait(refs, num_returns=len(refs), timeout=STOP_WAIT)
        if self._owns_ray:
            ray.shutdown()
        self.connected = False
        log.info("ray: %d actors stopped", len(members))

    def report(self) -> dict[str, Any]:
        """The Ray members and their state, for `sollol ray status`."""
        with self._lock:
            members = [m.public() for m in self.members.values()]
            nodes = list(self.nodes)
            failures = dict(self.failures)
        now = time.monotonic()
        failed = [{"id": slot.backend_id, "error": error, "pause": pause,
                   "retry_in": round(max(0.0, at - now), 1)}
                  for slot, (at, pause, error) in failures.items()]
        return {"address": self.settings.address, "namespace": NAMESPACE,
                "connected": self.connected, "error": self.error,
                "rpc_per": self.settings.rpc_per, "nodes": nodes,
                "members": sorted(members, key=lambda m: m["id"]), "failures": failed}


def _threads(cpus: float) -> int:
    return max(1, int(cpus))


def _short(exc: BaseException) -> str:
    """One line: the actor's own exception when Ray wraps it (RayTaskError.cause)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _backend(member: Member) -> Backend:
    slot, info = member.slot, member.info
    labels = {"source": "ray", "ray_node": info.get("node_id", ""), "node_ip": info.get("ip", "")}
    kind = "openai" if slot.kind == POOL else "rpc"
    return Backend(slot.backend_id, kind, info["address"], labels=labels)


def _reading(devices: list[dict[str, Any]]) -> MemoryReading | None:
    """The memory of the devices it serves (its GPUs' when it has any)."""
    gpus = [d for d in devices if d.get("gpu")] or devices
    if not gpus:
        return None
    return MemoryReading(sum(d["total"] for d in gpus), sum(d["free"] for d in gpus),
                         tuple(d["name"] for d in gpus))
