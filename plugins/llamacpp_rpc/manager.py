"""Coordinators: start one per model on free rpc-servers, share it, keep it warm or stop it.

All state changes happen on the event loop's thread. Probes and file reads go to worker threads;
processes are spawned on the loop's thread (the parent-death signal follows the forking thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs

from sollol.core.names import canonical_model
from sollol.errors import ModelNotFound, NoRouteAvailable, Overloaded
from sollol.models import ModelInfo, ResolvedModel, ShardOffer, ShardPlacement

from . import links, procs
from .coordinator import FAILED, READY, STARTING, STOPPED, Coordinator, CoordinatorFailed
from .plan import DoesNotFit, Plan, make_plan, needed_bytes, place
from .shards import ShardRegistry

log = logging.getLogger("sollol.sharding")
Resolver = Callable[[str], Awaitable[tuple[ResolvedModel | None, ModelInfo | None]]]
"""model -> (its GGUF, its metadata if readable)."""
Placer = Callable[[str, int, list[ShardOffer]], ShardPlacement]
"""(model, bytes needed, free rpc-servers) -> where it goes (the `sollol_place_shards` hook)."""


@attrs.frozen
class Options:
    """The settings a manager runs with (from the config)."""

    mode: str
    idle_timeout: float
    max_coordinators: int
    startup_timeout: float
    wait_timeout: float
    ctx_size: int
    extra_args: tuple[str, ...]
    state_dir: Path
    verbose_log: bool = False
    placement: str = "fewest"
    when_busy: str = "evict"
    queue_size: int = 64
    """Requests that may wait for busy rpc-servers at once; more get 429 at once."""
    local_memory: int = 0
    """Bytes of the gateway machine's memory its coordinators may keep layers in."""
    link_timeout: float = 0.0
    """Seconds without an answer on a link to an rpc-server before the kernel drops it (0: off)."""


_MAX_PER_MODEL = 256
"""Most models whose start counts and unservable reports are kept (the oldest go first)."""


def _trim(table: dict[str, Any]) -> None:
    """Drop the oldest entries of a per-model table past _MAX_PER_MODEL (dicts keep order)."""
    while len(table) > _MAX_PER_MODEL:
        del table[next(iter(table))]


def slug(model: str) -> str:
    """A file-name-safe, collision-free name for a model, the same for every spelling of it
    (one log per model)."""
    model = canonical_model(model)
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_.")[:60] or "model"
    return f"{text}-{hashlib.sha256(model.encode()).hexdigest()[:8]}"


@attrs.define
class CoordinatorManager:
    """Owns every coordinator of one gateway; at most one per model."""

    options: Options
    shards: ShardRegistry
    resolve: Resolver
    llama_server: Path | None
    missing_binary: str | None = None
    placer: Placer | None = None
    """Chooses rpc-servers for a model; None: the built-in strategy of `options.placement`."""
    coordinators: dict[str, Coordinator] = attrs.field(factory=dict)
    unservable: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    warnings: list[str] = attrs.field(factory=list)
    _lock: asyncio.Lock = attrs.field(factory=asyncio.Lock)
    _generation: int = 0
    starts: dict[str, int] = attrs.field(factory=dict)
    """Coordinators started per model, restarts included (for `sollol_coordinator_starts`)."""
    _tasks: set[asyncio.Task[Any]] = attrs.field(factory=set)
    waiting: int = 0
    """Requests waiting now for busy rpc-servers (at most `options.queue_size`)."""
    links_unavailable: str | None = None
    """Why the links to rpc-servers cannot be watched here (see `links`), or None."""

    @property
    def pid_dir(self) -> Path:
        return self.options.state_dir / "coordinators"

    def log_path(self, model: str) -> Path:
        return self.options.state_dir / "logs" / f"{slug(model)}.log"

    def warn(self, text: str) -> None:
        log.warning("%s", text)
        self.warnings = [*self.warnings[-19:], f"{time.strftime('%H:%M:%S')} {text}"]

    # ----------------------------------------------------------------------------- acquiring

    async def checkout(self, model: str) -> Coordinator:
        """A ready coordinator for `model` with one more request in flight (start it if needed)."""
        deadline = time.monotonic() + self.options.wait_timeout
        queued = False
        try:
            while True:
                # A client that goes away cancels its request; stopping and starting
                # coordinators must finish all the same, or rpc-servers would stay held.
                task = self._spawn_task(self._current(model))
                task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved
                coord = await asyncio.shield(task)
                if coord is None:  # every rpc-server is busy with another model
                    if not queued:
                        if self.waiting >= self.options.queue_size:
                            raise Overloaded(
                                f"sharding: {self.waiting} requests already wait for busy "
                                f"rpc-servers (rpc_queue_size); not queueing {model[:100]!r}",
                                retry_after=5.0)
                        self.waiting += 1
                        queued = True
                    if time.monotonic() > deadline:
                        busy = ", ".join(f"{c.model} ({c.in_flight} in flight)"
                                         for c in self.coordinators.values())
                        msg = (f"sharding: every rpc-server is busy ({busy}); waited "
                               f"{self.options.wait_timeout:g}s for {model!r}")
                        raise Overloaded(msg, retry_after=5.0)
                    await asyncio.sleep(0.25)
                    continue
                try:
                    await asyncio.shield(coord.ready)
                except CoordinatorFailed as exc:
                    if coord.draining or self.coordinators.get(model) not in (None, coord):
                        continue  # the supervisor already restarted it, or it was drained
                    raise NoRouteAvailable(f"sharding {model!r}: {exc}") from None
                if coord.state != READY or not coord.alive():
                    await asyncio.sleep(0.05)
                    continue
                coord.in_flight += 1
                coord.last_used = time.monotonic()
                return coord
        finally:
            if queued:
                self.waiting -= 1

    async def _current(self, model: str) -> Coordinator | None:
        """The model's coordinator, started if needed; None while every rpc-server is busy."""
        async with self._lock:
            coord = self.coordinators.get(model)
            if coord is not None and coord.state == READY and not coord.alive():
                # died since the supervisor last looked: handle it now, not next pass
                await self._failed_locked(coord, coord.exit_reason())
                coord = self.coordinators.get(model)
            if coord is not None and coord.draining and coord.state in (STARTING, READY):
                return None  # wait: it stops once its requests finish, then we restart
            if coord is None or coord.state in (FAILED, STOPPED):
                coord = await self._start_locked(model)
            return coord

    def split_local(self, size: int, info: ModelInfo | None) -> tuple[int, int]:
        """(bytes the rpc-servers must hold, layers kept on the gateway machine): whole layers
        fit into `local_memory` stay here (llama-server's own memory), the rest is sharded."""
        kv = info.kv_bytes_per_token if info else None
        needed = needed_bytes(size, kv, self.options.ctx_size)
        layers = info.layer_count if info else None
        if not self.options.local_memory or not layers:
            return needed, 0
        per_layer = needed / (layers + 1)  # the output layer counts as one
        local = min(layers, int(self.options.local_memory // per_layer))
        return needed - int(local * per_layer), local

    def preview(self, model: str, needed: int) -> str:
        """What a request for `model` would do now, in words (no side effects, no probes)."""
        coord = self.coordinators.get(model)
        if coord is not None and coord.state in (STARTING, READY):
            return f"its coordinator is {coord.state} on {', '.join(coord.plan.addresses)}"
        active = [c for c in self.coordinators.values() if c.state in (STARTING, READY)]
        offers = [self.shards.offer(s) for s in self.shards.shards.values() if s.usable]
        if len(active) >= self.options.max_coordinators:
            busy = f"{len(active)} coordinator(s) run, the most rpc_max_coordinators allows"
        else:
            try:
                return f"would start a coordinator: {self._plan(model, needed, offers).reason}"
            except DoesNotFit as exc:
                busy = f"the free rpc-servers cannot hold it ({exc})"
        idle = sorted((c for c in active if c.state == READY and c.in_flight == 0),
                      key=lambda c: c.last_used)
        if self.options.when_busy == "evict" and idle:
            return (f"{busy}: would stop the least recently used idle coordinator "
                    f"({idle[0].model!r}) first (rpc_when_busy = evict)")
        return (f"{busy}: would wait up to {self.options.wait_timeout:g}s for rpc-servers to "
                f"free up, then answer 429 (rpc_when_busy = {self.options.when_busy})")

    def preload(self, model: str) -> None:
        """Start `model`'s coordinator in the background, so its first request finds it warm."""
        if self.options.mode == "ephemeral":
            self.warn(f"rpc_preload {model!r}: ignored in ephemeral mode (a coordinator stops "
                      "after each request)")
            return

        async def warm() -> None:
            started = time.monotonic()
            try:
                coord = await self.checkout(model)
            except (NoRouteAvailable, ModelNotFound, Overloaded) as exc:
                self.warn(f"rpc_preload {model!r} failed: {exc}")
                return
            self.checkin(coord, served=False)
            log.info("preloaded %s in %.1fs", model, time.monotonic() - started)

        self._spawn_task(warm())

    def checkin(self, coord: Coordinator, served: bool = True) -> None:
        """One request on `coord` ended (or was never sent, with `served=False`)."""
        coord.in_flight = max(0, coord.in_flight - 1)
        coord.served += served
        coord.last_used = time.monotonic()
        if coord.in_flight == 0 and coord.state == READY and (
                coord.draining or self.options.mode == "ephemeral"):
            self._spawn_task(self._stop_if_idle(coord))

    async def _stop_if_idle(self, coord: Coordinator) -> None:
        async with self._lock:
            if coord.in_flight == 0 and coord.state == READY:
                await self._stop_locked(coord, coord.draining or
                                        "ephemeral mode: request finished")

    async def drain(self, addresses: list[str], why: str) -> list[str]:
        """Coordinators using `addresses` take no new requests and stop once idle; the next
        request for their model starts a new one on the remaining rpc-servers."""
        drained = []
        async with self._lock:
            for coord in list(self.coordinators.values()):
                if coord.state not in (STARTING, READY) or coord.draining:
                    continue
                if not set(addresses) & set(coord.plan.addresses):
                    continue
                coord.draining = why
                drained.append(coord.id)
                self.warn(f"coordinator for {coord.model!r} drains: {why}")
                if coord.state == STARTING or coord.in_flight == 0:
                    await self._stop_locked(coord, why)
        return drained

    async def _start_locked(self, model: str) -> Coordinator | None:
        """Plan and spawn a coordinator; None when rpc-servers are busy and we should wait."""
        if self.llama_server is None:
            raise NoRouteAvailable(f"sharding: {self.missing_binary}")
        resolved, info = await self.resolve(model)
        if resolved is None:
            raise ModelNotFound(f"model {model!r} not found: no GGUF file resolves for it "
                                "(an Ollama store name, or a GGUF file in a gguf_dirs folder)")
        needed, local_layers = self.split_local(resolved.size, info)
        active = [c for c in self.coordinators.values() if c.state in (STARTING, READY)]
        everything = [self.shards.offer(s) for s in self.shards.shards.values()
                      if s.healthy and s.incompatible is None]
        try:  # could it fit even if every other coordinator stopped?
            self._plan(model, needed, everything)
        except DoesNotFit as exc:
            self._unservable(model, exc)
            raise NoRouteAvailable(f"sharding: {exc}") from None
        while True:
            free = [s for s in self.shards.shards.values() if s.usable]
            await asyncio.gather(*(self.shards.probe(s) for s in free))  # fresh, right before use
            for shard in free:
                if not shard.usable:
                    self.warn(f"leaving out rpc-server {shard.address} for {model!r}: "
                              f"{shard.incompatible or shard.detail}")
            candidates = [self.shards.offer(s) for s in free if s.usable]
            room = len(active) < self.options.max_coordinators
            try:
                plan = self._plan(model, needed, candidates) if room else None
            except DoesNotFit:
                plan = None
            if plan is not None:
                break
            idle = sorted((c for c in active if c.state == READY and c.in_flight == 0),
                          key=lambda c: c.last_used)
            if self.options.when_busy != "evict":
                idle = []  # wait for a coordinator to go idle and time out, never cut one short
            if not idle and not active:  # nothing to wait for: the free rpc-servers are it
                try:
                    self._plan(model, needed, candidates)
                except DoesNotFit as exc:
                    self._unservable(model, exc)
                    raise NoRouteAvailable(f"sharding: {exc}") from None
            if not idle:
                return None
            await self._stop_locked(idle[0], f"least recently used; its rpc-servers are "
                                             f"needed for {model!r}")
            active.remove(idle[0])
        self.unservable.pop(model, None)
        if local_layers:
            plan = attrs.evolve(plan, local_layers=local_layers,
                                layer_count=info.layer_count if info else None,
                                reason=f"{plan.reason}; {local_layers} layer(s) stay in the "
                                       "gateway machine's memory (rpc_local_memory)")
        return self._spawn_locked(model, resolved, plan)

    def _plan(self, model: str, needed: int, offers: list[ShardOffer]) -> Plan:
        """Where `model` goes on these rpc-servers (DoesNotFit with the numbers if nowhere)."""
        if self.placer is not None:
            placement = self.placer(model, needed, offers)
        else:
            placement = place(needed, offers, self.options.placement)
        return make_plan(model, needed, offers, placement)

    def _spawn_locked(self, model: str, resolved: ResolvedModel, plan: Plan) -> Coordinator:
        assert self.llama_server is not None
        self._generation += 1
        self.starts[model] = self.starts.pop(model, 0) + 1
        _trim(self.starts)
        coord = Coordinator(model=model, resolved=resolved, plan=plan, port=procs.free_port(),
                            log_path=self.log_path(model), generation=self._generation)
        self.shards.hold(plan.addresses, coord.id)
        try:
            coord.start(self.llama_server, self.options.ctx_size, list(self.options.extra_args),
                        self.options.verbose_log)
        except OSError as exc:
            self.shards.release(plan.addresses)
            raise NoRouteAvailable(f"sharding: cannot start llama-server: {exc}") from None
        procs.write_pid_file(self.pid_dir, coord.proc,
                             {"model": model, "backends": plan.addresses, "port": coord.port,
                              "log": str(coord.log_path)})
        self.coordinators[model] = coord
        log.info("starting coordinator for %s on %s (tensor split %s, pid %s)", model,
                 ", ".join(plan.addresses), plan.tensor_split, coord.proc.pid)
        self._spawn_task(self._bring_up(coord))
        return coord

    async def _bring_up(self, coord: Coordinator) -> None:
        try:
            await coord.wait_ready(self.options.startup_timeout)
        except CoordinatorFailed as exc:
            async with self._lock:
                await self._failed_locked(coord, str(exc))
            return
        if coord.state != STARTING:
            return  # stopped while it loaded
        coord.state = READY
        log.info("coordinator for %s ready in %.1fs", coord.model,
                 (coord.ready_at or time.time()) - coord.started_at)
        self._save_report(coord)
        if not coord.ready.done():
            coord.ready.set_result(None)

    # --------------------------------------------------------------------------- supervision

    async def supervise(self) -> None:
        """One supervision pass: dead processes, lost shards, idle timeouts."""
        from . import sockets

        for coord in list(self.coordinators.values()):
            if coord.state in (STARTING, READY) and coord.alive():
                await self._watch_links(coord)
            if coord.state == STARTING and coord.proc is not None and coord.alive():
                delivered = await asyncio.to_thread(sockets.bytes_delivered, coord.proc.pid)
                coord.note_upload(delivered, sockets.resolve)
            if coord.state in (STARTING, READY) and not coord.alive():
                async with self._lock:
                    if coord.state in (STARTING, READY):
                        await self._failed_locked(coord, coord.exit_reason())
                continue
            if coord.state != READY:
                continue
            if coord.proc is not None:
                peers = await asyncio.to_thread(sockets.established_peers, coord.proc.pid)
                lost = [a for a in coord.plan.addresses
                        if peers is not None and not (sockets.resolve(a) & peers)]
                if lost and coord.alive():
                    async with self._lock:
                        if coord.state == READY:
                            # llama-server would abort on the next request; restart it first.
                            # (closed by the rpc-server, or by our kernel after
                            # rpc_link_timeout without an answer: see links.py)
                            reason = f"lost its connection to rpc-server(s) {', '.join(lost)}"
                            coord.error = reason
                            self.warn(f"coordinator for {coord.model!r}: {reason}")
                            # no grace: it cannot finish anything without that rpc-server,
                            # and a graceful exit may wait on the dead link
                            procs.kill(coord.proc)
                            await self._stop_locked(coord, reason)
                            dead = await self._after_failure(coord, reason)
                            if dead:
                                coord.error = f"{reason} ({', '.join(dead)} does not answer)"
                    continue
            idle = time.monotonic() - coord.last_used
            if coord.in_flight == 0 and idle > self.options.idle_timeout:
                async with self._lock:
                    if coord.in_flight == 0 and coord.state == READY:
                        await self._stop_locked(coord, f"idle for {idle:.0f}s")

    async def _watch_links(self, coord: Coordinator) -> None:
        """Let the kernel drop a dead link to one of its rpc-servers (new connections only)."""
        timeout = self.options.link_timeout
        if not timeout or self.links_unavailable is not None or coord.proc is None:
            return
        done = frozenset(coord.links_armed)
        try:
            coord.links_armed |= await asyncio.to_thread(
                links.arm, coord.proc.pid, coord.plan.addresses, timeout, done)
        except links.CannotArm as exc:
            self.links_unavailable = str(exc)
            self.warn(f"cannot watch the links to rpc-servers ({exc}): a cut link leaves its "
                      "coordinator hanging until rpc_startup_timeout, or for good once loaded "
                      "(clients still get the gateway's timeouts)")

    async def _failed_locked(self, coord: Coordinator, reason: str) -> None:
        if coord.state not in (STARTING, READY):
            return  # already handled (the supervisor and a request can both notice)
        was = coord.state
        coord.state, coord.error = FAILED, reason
        self.warn(f"coordinator for {coord.model!r} failed ({was}): {reason}")
        if coord.proc is not None:
            # e.g. past the startup timeout it still runs, attached to its rpc-servers: stop it
            # before they are released (and probed, or handed to another coordinator)
            await asyncio.to_thread(procs.terminate, coord.proc)
        self._forget(coord)
        dead = await self._after_failure(coord, reason)
        if dead:
            coord.error = reason = f"{reason} (rpc-server {', '.join(dead)} does not answer)"
        if not coord.ready.done():
            coord.ready.set_exception(CoordinatorFailed(
                self.unservable.get(coord.model, {}).get("reason") or reason))
            coord.ready.exception()  # retrieved: a failure nobody awaits is not an error

    async def _after_failure(self, coord: Coordinator, reason: str) -> list[str]:
        """Find the dead shards, then restart on the survivors or report the model unservable;
        returns the dead shards' addresses."""
        known = [self.shards.shards[a] for a in coord.plan.addresses if a in self.shards.shards]
        await asyncio.gather(*(self.shards.probe(shard) for shard in known))
        dead = [a for a in coord.plan.addresses
                if a not in self.shards.shards or not self.shards.shards[a].usable]
        if dead:
            self.warn(f"rpc-server(s) {', '.join(dead)} unusable after {coord.model!r} failed")
        if coord.ready_at is None and not dead:
            return dead  # it failed to load on healthy backends: restarting would loop
        if self.options.mode == "ephemeral" and coord.ready_at is not None:
            return dead  # nothing is waiting; the next request starts a fresh one
        try:
            replacement = await self._start_locked(coord.model)
        except (NoRouteAvailable, ModelNotFound) as exc:
            self.unservable.setdefault(coord.model, {"reason": str(exc), "numbers": {}})
            self.unservable[coord.model]["after"] = reason
            return dead
        if replacement is not None:
            log.info("restarting %s on %s", coord.model, ", ".join(replacement.plan.addresses))
        return dead

    def _unservable(self, model: str, exc: DoesNotFit) -> None:
        self.unservable.pop(model, None)
        self.unservable[model] = {"reason": str(exc), "numbers": exc.numbers,
                                  "since": time.time()}
        _trim(self.unservable)
        self.warn(f"model {model!r} is unservable: {exc}")

    async def _stop_locked(self, coord: Coordinator, why: str) -> None:
        log.info("stopping coordinator for %s: %s", coord.model, why)
        coord.state = STOPPED
        if coord.proc is not None:
            await asyncio.to_thread(procs.terminate, coord.proc)
        self._forget(coord)
        if not coord.ready.done():
            coord.ready.set_exception(CoordinatorFailed(f"stopped: {why}"))
            coord.ready.exception()

    def _forget(self, coord: Coordinator) -> None:
        self.shards.release(coord.plan.addresses)
        if coord.proc is not None:
            (self.pid_dir / f"{coord.proc.pid}.json").unlink(missing_ok=True)
        if self.coordinators.get(coord.model) is coord and coord.state == STOPPED:
            del self.coordinators[coord.model]

    async def stop_all(self) -> None:
        async with self._lock:
            for coord in list(self.coordinators.values()):
                if coord.state in (STARTING, READY):
                    await self._stop_locked(coord, "the route is stopping")
            self.coordinators.clear()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _spawn_task(self, coro: Awaitable[Any]) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _save_report(self, coord: Coordinator) -> None:
        """Keep the layer report on disk too, so `sollol shard status` works without a gateway."""
        folder = self.options.state_dir / "reports"
        with contextlib.suppress(OSError):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{slug(coord.model)}.json").write_text(
                json.dumps(coord.as_dict(), indent=2, default=str))
