"""The supervisor: starts coordinators, watches them, and fails, restarts or stops them.

It owns the table of coordinators (at most one per model) and the lock that every start and stop
takes. All state changes happen on the event loop's thread. Probes and file reads go to worker
threads; processes are spawned on the loop's thread (the parent-death signal follows the forking
thread). Where a failed coordinator's model goes next is the scheduler's decision (`Replacer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import attrs

from sollol.errors import BinaryNotFound, NoRouteAvailable
from sollol.models import ResolvedModel

from . import links, procs
from .cache_fill import fill_caches
from .coordinator import FAILED, READY, STARTING, STOPPED, Coordinator, CoordinatorFailed
from .options import Options, slug, trim
from .plan import Plan
from .shards import ShardRegistry

log = logging.getLogger("sollol.sharding")
SUPERVISE_EVERY = 0.5
"""Seconds between checks of coordinator processes and their connections (cheap: /proc reads)."""


class Replacer(Protocol):
    """What the supervisor asks of the scheduler (see scheduler.Scheduler)."""

    async def replace_locked(self, model: str, after: str) -> str | None:
        """Start `model` again after its coordinator failed; why it cannot be, or None."""

    def wake(self) -> None:
        """rpc-servers or coordinators came free: waiting requests look again."""

    async def rebalance_locked(self) -> list[str]:
        """Move idle coordinators back to their preferred rpc-servers once those returned."""


@attrs.define
class Supervisor:
    """Owns every coordinator process of one gateway; at most one per model."""

    options: Options
    shards: ShardRegistry
    llama_server: Path | None = None
    missing_binary: str | None = None
    coordinators: dict[str, Coordinator] = attrs.field(factory=dict)
    warnings: list[str] = attrs.field(factory=list)
    lock: asyncio.Lock = attrs.field(factory=asyncio.Lock)
    """Taken by every start and stop of a coordinator."""
    starts: dict[str, int] = attrs.field(factory=dict)
    """Coordinators started per model, restarts included (for `sollol_coordinator_starts`)."""
    links_unavailable: str | None = None
    """Why the links to rpc-servers cannot be watched here (see `links`), or None."""
    replacer: Replacer | None = None
    """The scheduler, once `bind` gave it: restarts and wake-ups go through it."""
    filled: dict[tuple[Any, ...], frozenset[int]] = attrs.field(factory=dict)
    """(shard, model file, split) whose caches this gateway filled -> the tensors' hashes."""
    _generation: int = 0
    _tasks: set[asyncio.Task[Any]] = attrs.field(factory=set)
    _watcher: asyncio.Task[None] | None = None

    def bind(self, replacer: Replacer) -> None:
        self.replacer = replacer

    @property
    def pid_dir(self) -> Path:
        return self.options.state_dir / "coordinators"

    def log_path(self, model: str) -> Path:
        return self.options.state_dir / "logs" / f"{slug(model)}.log"

    def warn(self, text: str) -> None:
        log.warning("%s", text)
        self.warnings = [*self.warnings[-19:], f"{time.strftime('%H:%M:%S')} {text}"]

    # ------------------------------------------------------------------------ its own life

    def reap_orphans(self) -> None:
        """Stop coordinators an earlier gateway left running (their pid files say which)."""
        reaped = procs.reap_orphans(self.pid_dir)
        if reaped:
            self.warn(f"stopped {len(reaped)} orphaned coordinator(s) from an earlier "
                      f"gateway: pids {reaped}")

    async def find_binaries(self, config: Any) -> None:
        """Find llama-server and learn the RPC protocol it speaks (or say why sharding is off)."""
        from sollol.llamacpp import find_binaries

        from .version import coordinator_version

        try:
            binaries = await asyncio.to_thread(find_binaries, config)
        except BinaryNotFound as exc:
            self.missing_binary = str(exc)
            self.warn(f"sharding is unavailable: {exc}")
            return
        self.llama_server = binaries.llama_server
        self.shards.client_version = await asyncio.to_thread(coordinator_version, binaries)
        if self.shards.client_version is None:
            self.warn(f"could not learn the RPC protocol version of {binaries.rpc_server}"
                      "; rpc-servers are not version-checked")

    def watch(self, health_interval: Callable[[], float]) -> None:
        """Supervise every SUPERVISE_EVERY seconds; probe free rpc-servers every
        `health_interval()` seconds (read each time: a reload may change it)."""
        self._watcher = asyncio.create_task(self._watch(health_interval),
                                            name="sollol-sharding-supervisor")

    async def _watch(self, health_interval: Callable[[], float]) -> None:
        last_health = time.monotonic()
        while True:
            await asyncio.sleep(SUPERVISE_EVERY)
            try:
                await self.supervise()
                # (re-discovery, e.g. an rpc-server started on loopback, is the cluster's job:
                # it calls sync_backends every discovery_interval)
                if time.monotonic() - last_health >= health_interval():
                    last_health = time.monotonic()
                    usable = self._usable()
                    await self.shards.probe_free()
                    if self._usable() - usable:
                        self._freed()  # an rpc-server came back: a waiting request may fit
                    await self._rebalance()
            except Exception:
                log.exception("sharding supervisor pass failed")

    async def _rebalance(self) -> None:
        """Let the scheduler move idle coordinators placed while an rpc-server was down."""
        if self.replacer is None or not any(c.down_at_start for c in self.coordinators.values()):
            return
        async with self.lock:
            moved = await self.replacer.rebalance_locked()
        if moved:
            log.info("moved back to their preferred rpc-servers: %s", ", ".join(moved))

    def _usable(self) -> set[str]:
        return {a for a, s in self.shards.shards.items() if s.usable}

    async def stop_all(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        async with self.lock:
            for coord in list(self.coordinators.values()):
                if coord.state in (STARTING, READY):
                    await self.stop_locked(coord, "the route is stopping")
            self.coordinators.clear()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def background(self, coro: Awaitable[Any]) -> asyncio.Future[Any]:
        """Run `coro` as a task that `stop_all` cancels."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------------------ starting

    def check_binary(self) -> None:
        """NoRouteAvailable when there is no llama-server to start."""
        if self.llama_server is None:
            raise NoRouteAvailable(f"sharding: {self.missing_binary}")

    def spawn_locked(self, model: str, resolved: ResolvedModel, plan: Plan) -> Coordinator:
        """Start a coordinator for `model` on `plan`'s rpc-servers and watch it come up."""
        assert self.llama_server is not None
        self._generation += 1
        self.starts[model] = self.starts.pop(model, 0) + 1
        trim(self.starts)
        coord = Coordinator(model=model, resolved=resolved, plan=plan, port=procs.free_port(),
                            log_path=self.log_path(model), generation=self._generation)
        self.shards.hold(plan.addresses, coord.id)
        if not self.options.fill_caches:
            try:
                coord.launch(self.llama_server, self.options, self.pid_dir)
            except NoRouteAvailable:
                self.shards.release(plan.addresses)
                raise
        self.coordinators[model] = coord
        self.background(self._fill_then_start(coord) if self.options.fill_caches
                        else self._bring_up(coord))
        return coord

    async def _fill_then_start(self, coord: Coordinator) -> None:
        """rpc_fill_caches: fill the shards' caches at once, then start (failures: warnings)."""
        await fill_caches(coord, self.shards.client_version, self.warn, self.filled)
        if coord.state != STARTING:
            return  # stopped while it filled
        try:
            coord.launch(self.llama_server, self.options, self.pid_dir)
        except NoRouteAvailable as exc:
            async with self.lock:
                await self.fail_locked(coord, str(exc))
            return
        await self._bring_up(coord)

    async def _bring_up(self, coord: Coordinator) -> None:
        try:
            await coord.wait_ready(self.options.startup_timeout)
        except CoordinatorFailed as exc:
            async with self.lock:
                await self.fail_locked(coord, str(exc))
            return
        if coord.state != STARTING:
            return  # stopped while it loaded
        coord.state = READY
        log.info("coordinator for %s ready in %.1fs", coord.model,
                 (coord.ready_at or time.time()) - coord.started_at)
        coord.save_report(self.options.state_dir / "reports")
        if not coord.ready.done():
            coord.ready.set_result(None)
        self._freed()  # ready and idle: a request waiting for room may evict it now

    # ------------------------------------------------------------------------------ watching

    async def supervise(self) -> None:
        """One supervision pass: dead processes, lost shards, idle timeouts."""
        for coord in list(self.coordinators.values()):
            if coord.state in (STARTING, READY) and coord.alive():
                await self._watch_links(coord)
                coord.bound_log()
            if coord.state == STARTING and coord.proc is not None:
                await coord.track_upload()
            if coord.state == STARTING and coord.proc is None:
                continue  # filling the rpc-servers' caches (rpc_fill_caches)
            if coord.state in (STARTING, READY) and not coord.alive():
                async with self.lock:
                    if coord.state in (STARTING, READY):
                        await self.fail_locked(coord, coord.exit_reason())
                continue
            if coord.state != READY:
                continue
            lost = await coord.lost_links()
            if lost and coord.alive():
                async with self.lock:
                    if coord.state == READY:
                        await self._cut_off_locked(coord, lost)
                continue
            idle = time.monotonic() - coord.last_used
            if coord.in_flight == 0 and idle > self.idle_limit(coord):
                async with self.lock:
                    if coord.in_flight == 0 and coord.state == READY:
                        await self.stop_locked(coord, f"idle for {idle:.0f}s")

    async def _cut_off_locked(self, coord: Coordinator, lost: list[str]) -> None:
        """llama-server would abort on the next request: restart it first. (The link was closed
        by the rpc-server, or by our kernel after rpc_link_timeout without an answer: links.py)"""
        reason = f"lost its connection to rpc-server(s) {', '.join(lost)}"
        coord.error = reason
        self.warn(f"coordinator for {coord.model!r}: {reason}")
        # no grace: it cannot finish anything without that rpc-server, and a graceful exit may
        # wait on the dead link
        procs.kill(coord.proc)
        await self.stop_locked(coord, reason)
        dead, _ = await self._after_failure(coord, reason)
        if dead:
            coord.error = f"{reason} ({', '.join(dead)} does not answer)"

    async def _watch_links(self, coord: Coordinator) -> None:
        """Let the kernel drop a dead link to one of its rpc-servers (new connections only)."""
        timeout = self.options.link_timeout
        if not timeout or self.links_unavailable is not None or coord.proc is None or (
                coord.relays is not None):  # a relay arms the sockets it owns itself
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

    # ------------------------------------------------------------------- failing and stopping

    async def fail_locked(self, coord: Coordinator, reason: str) -> None:
        """`coord` died or never came up: stop it, free its rpc-servers, restart if that helps."""
        if coord.state not in (STARTING, READY):
            return  # already handled (the supervisor and a request can both notice)
        was = coord.state
        coord.state, coord.error = FAILED, reason
        self.warn(f"coordinator for {coord.model!r} failed ({was}): {reason}")
        if coord.proc is not None:
            # e.g. past the startup timeout it still runs, attached to its rpc-servers: stop it
            # before they are released (and probed, or handed to another coordinator)
            await asyncio.to_thread(procs.terminate, coord.proc)
        await asyncio.to_thread(coord.stop_relays)
        self._forget(coord)
        dead, unservable = await self._after_failure(coord, reason)
        if dead:
            coord.error = reason = f"{reason} (rpc-server {', '.join(dead)} does not answer)"
        if not coord.ready.done():
            coord.ready.set_exception(CoordinatorFailed(unservable or reason))
            coord.ready.exception()  # retrieved: a failure nobody awaits is not an error

    async def _after_failure(self, coord: Coordinator,
                             reason: str) -> tuple[list[str], str | None]:
        """Find the dead shards, then restart on the survivors or report the model unservable;
        returns the dead shards' addresses and why the model cannot be served (or None)."""
        known = [self.shards.shards[a] for a in coord.plan.addresses if a in self.shards.shards]
        await asyncio.gather(*(self.shards.probe(shard) for shard in known))
        dead = [a for a in coord.plan.addresses
                if a not in self.shards.shards or not self.shards.shards[a].usable]
        if dead:
            self.warn(f"rpc-server(s) {', '.join(dead)} unusable after {coord.model!r} failed")
        if coord.ready_at is None and not dead:
            return dead, None  # it failed to load on healthy backends: restarting would loop
        if self.options.mode == "ephemeral" and coord.ready_at is not None:
            return dead, None  # nothing is waiting; the next request starts a fresh one
        if self.replacer is None:
            return dead, None
        return dead, await self.replacer.replace_locked(coord.model, reason)

    def idle_limit(self, coord: Coordinator) -> float:
        """Seconds `coord` may stay idle: its requests' `keep_alive`, else rpc_idle_timeout."""
        return self.options.idle_timeout if coord.keep_alive is None else coord.keep_alive

    async def stop_if_idle(self, coord: Coordinator) -> None:
        """Stop a draining, unloaded (keep_alive 0) or ephemeral coordinator whose last request
        just ended."""
        async with self.lock:
            if coord.in_flight == 0 and coord.state == READY:
                why = coord.draining or ("keep_alive 0: unloaded after its request"
                                         if coord.keep_alive == 0 else
                                         "ephemeral mode: request finished")
                await self.stop_locked(coord, why)

    async def unload(self, model: str, why: str) -> bool:
        """Stop `model`'s coordinator now, or once its requests finish (it takes no new ones);
        False when none runs."""
        async with self.lock:
            coord = self.coordinators.get(model)
            if coord is None or coord.state not in (STARTING, READY):
                return False
            if coord.state == STARTING or coord.in_flight == 0:
                await self.stop_locked(coord, why)
            else:
                coord.draining = why
            return True

    async def drain(self, addresses: list[str], why: str) -> list[str]:
        """Coordinators using `addresses` take no new requests and stop once idle; the next
        request for their model starts a new one on the remaining rpc-servers."""
        drained = []
        async with self.lock:
            for coord in list(self.coordinators.values()):
                if coord.state not in (STARTING, READY) or coord.draining:
                    continue
                if not set(addresses) & set(coord.plan.addresses):
                    continue
                coord.draining = why
                drained.append(coord.id)
                self.warn(f"coordinator for {coord.model!r} drains: {why}")
                if coord.state == STARTING or coord.in_flight == 0:
                    await self.stop_locked(coord, why)
        return drained

    async def stop_locked(self, coord: Coordinator, why: str) -> None:
        log.info("stopping coordinator for %s: %s", coord.model, why)
        coord.state = STOPPED
        if coord.fill is not None:
            coord.fill.cancel()
        if coord.proc is not None:
            await asyncio.to_thread(procs.terminate, coord.proc)
        await asyncio.to_thread(coord.stop_relays)
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
        self._freed()

    def _freed(self) -> None:
        if self.replacer is not None:
            self.replacer.wake()
