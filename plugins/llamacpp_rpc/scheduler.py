"""The scheduler: which coordinator serves a request, and what a request does while every
rpc-server is busy.

A request checks out its model's coordinator, started if needed. When the free rpc-servers cannot
hold the model, the least recently used idle coordinator is stopped to make room (`rpc_when_busy =
evict`), or the request joins a bounded queue (`rpc_queue_size`) until rpc-servers come free or
`rpc_wait_timeout` passes. Waiters sleep on an event that whatever frees rpc-servers or a
coordinator sets (`wake`): a request ending, a coordinator stopping, an rpc-server joining or coming
back; each wake-up makes every waiter look once more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import attrs

from sollol.errors import ModelNotFound, NoRouteAvailable, Overloaded
from sollol.models import ModelInfo, ResolvedModel, ShardOffer, ShardPlacement

from . import draft as drafts
from . import pipeline
from .coordinator import FAILED, READY, STARTING, STOPPED, Coordinator, CoordinatorFailed
from .options import Options, trim
from .plan import DoesNotFit, Plan, make_plan, place
from .shards import SETTLED_PROBES, ShardRegistry
from .supervisor import Supervisor

log = logging.getLogger("sollol.sharding")
Resolver = Callable[[str], Awaitable[tuple[ResolvedModel | None, ModelInfo | None]]]
"""model -> (its GGUF, its metadata if readable)."""
Placer = Callable[[str, int, list[ShardOffer]], ShardPlacement]
"""(model, bytes needed, free rpc-servers) -> where it goes (the `sollol_place_shards` hook)."""
REPLACE_WITHIN = 5.0
"""Seconds a retry waits for the supervisor to replace the coordinator that just failed it."""


@attrs.define
class Scheduler:
    """Hands out coordinators to requests and keeps the queue of those waiting for rpc-servers."""

    options: Options
    shards: ShardRegistry
    supervisor: Supervisor
    resolve: Resolver
    placer: Placer | None = None
    """Chooses rpc-servers for a model; None: the built-in strategy of `options.placement`."""
    unservable: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    """Models no set of rpc-servers can hold, with the numbers (for status)."""
    waiting: int = 0
    """Requests waiting now for busy rpc-servers (at most `options.queue_size`)."""
    rechecks: int = 0
    """Times a waiting request woke up and looked again (a change, or its deadline)."""
    _changed: asyncio.Event = attrs.field(factory=asyncio.Event)
    """Set (then replaced by a fresh one) when rpc-servers or a coordinator may have come free."""

    def wake(self) -> None:
        """Something came free: every waiting request looks again."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def _until_woken(self, changed: asyncio.Event, deadline: float) -> None:
        """Wait for `changed` (taken before looking, so a change meanwhile is not missed)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), max(0.0, deadline - time.monotonic()))

    # ----------------------------------------------------------------------------- checkout

    async def checkout(self, model: str, *, avoid: Collection[str] = ()) -> Coordinator:
        """A ready coordinator for `model` with one more request in flight (start it if needed).
        A retry `avoid`s the coordinator ids that failed it: if it gets one of those, it gives
        the supervisor a moment to replace it (a model has one coordinator, so a live one is
        returned all the same)."""
        coord = await self._checkout(model)
        if coord.id not in avoid:
            return coord
        self.checkin(coord, served=False)
        deadline = time.monotonic() + REPLACE_WITHIN
        while coord.alive() and coord.state == READY and time.monotonic() < deadline:
            await self._until_woken(self._changed, deadline)
        return await self._checkout(model)

    async def _checkout(self, model: str) -> Coordinator:
        deadline = time.monotonic() + self.options.wait_timeout
        queued = False
        slot_wait: Coordinator | None = None  # the coordinator whose slot it waits for
        try:
            while True:
                changed = self._changed
                # A client that goes away cancels its request; stopping and starting
                # coordinators must finish all the same, or rpc-servers would stay held.
                task = self.supervisor.background(self._current(model))
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
                                         for c in self.supervisor.coordinators.values())
                        msg = (f"sharding: every rpc-server is busy ({busy}); waited "
                               f"{self.options.wait_timeout:g}s for {model!r}")
                        raise Overloaded(msg, retry_after=5.0)
                    await self._until_woken(changed, deadline)
                    self.rechecks += 1
                    continue
                try:
                    await asyncio.shield(coord.ready)
                except CoordinatorFailed as exc:
                    if coord.draining or self.supervisor.coordinators.get(model) not in (None,
                                                                                        coord):
                        continue  # the supervisor already restarted it, or it was drained
                    raise NoRouteAvailable(f"sharding {model!r}: {exc}") from None
                if coord.state != READY or not coord.alive():
                    continue  # stopped or died since it came up: the next look handles it
                if coord.slots and coord.in_flight >= coord.slots:  # all busy: wait for one
                    if not queued:
                        if self.waiting >= self.options.queue_size:
                            coord.refused += 1
                            raise Overloaded(
                                f"sharding: all {coord.slots} slot(s) of {model[:100]!r}'s "
                                f"coordinator are busy (rpc_parallel) and {self.waiting} "
                                "request(s) already wait (rpc_queue_size)", retry_after=1.0)
                        self.waiting += 1
                        queued = True
                    if slot_wait is not coord:
                        if slot_wait is not None:
                            slot_wait.queued -= 1
                        slot_wait = coord
                        coord.queued += 1
                    if time.monotonic() > deadline:
                        coord.refused += 1
                        raise Overloaded(f"sharding: waited {self.options.wait_timeout:g}s for "
                                         f"a free slot of {model!r}'s coordinator (all "
                                         f"{coord.slots} busy, rpc_parallel)", retry_after=5.0)
                    await self._until_woken(changed, deadline)
                    continue
                coord.in_flight += 1
                coord.last_used = time.monotonic()
                return coord
        finally:
            if queued:
                self.waiting -= 1
            if slot_wait is not None:
                slot_wait.queued -= 1

    async def _current(self, model: str) -> Coordinator | None:
        """The model's coordinator, started if needed; None while every rpc-server is busy."""
        async with self.supervisor.lock:
            coord = self.supervisor.coordinators.get(model)
            if coord is not None and coord.state == READY and not coord.alive():
                # died since the supervisor last looked: handle it now, not next pass
                await self.supervisor.fail_locked(coord, coord.exit_reason())
                coord = self.supervisor.coordinators.get(model)
            if coord is not None and coord.draining and coord.state in (STARTING, READY):
                return None  # wait: it stops once its requests finish, then we restart
            if coord is None or coord.state in (FAILED, STOPPED):
                coord = await self.start_locked(model)
            return coord

    def checkin(self, coord: Coordinator, served: bool = True) -> None:
        """One request on `coord` ended (or was never sent, with `served=False`)."""
        coord.in_flight = max(0, coord.in_flight - 1)
        coord.served += served
        coord.last_used = time.monotonic()
        if coord.in_flight == 0 and coord.state == READY and (
                coord.draining or self.options.mode == "ephemeral" or coord.keep_alive == 0):
            self.supervisor.background(self.supervisor.stop_if_idle(coord))
        self.wake()  # a slot came free (and an idle coordinator may be evicted)

    def preload(self, model: str) -> None:
        """Start `model`'s coordinator in the background, so its first request finds it warm."""
        if self.options.mode == "ephemeral":
            self.supervisor.warn(f"rpc_preload {model!r}: ignored in ephemeral mode (a "
                                 "coordinator stops after each request)")
            return

        async def warm() -> None:
            started = time.monotonic()
            try:
                coord = await self.checkout(model)
            except (NoRouteAvailable, ModelNotFound, Overloaded) as exc:
                self.supervisor.warn(f"rpc_preload {model!r} failed: {exc}")
                return
            self.checkin(coord, served=False)
            log.info("preloaded %s in %.1fs", model, time.monotonic() - started)

        self.supervisor.background(warm())

    # ----------------------------------------------------------------- where, evict or wait

    def fails_now(self, model: str, needed: int) -> str:
        """Why a request for `model` would fail at once now (as `start_locked` would refuse
        it: no llama-server, or the answering rpc-servers could not hold it even if every other
        coordinator stopped), or "" (no side effects, no probes)."""
        coord = self.supervisor.coordinators.get(model)
        if coord is not None and coord.state in (STARTING, READY) and not coord.draining:
            return ""
        if self.supervisor.llama_server is None:
            return self.supervisor.missing_binary or "no llama-server to start"
        everything = [self.shards.offer(s) for s in self.shards.shards.values()
                      if s.healthy and s.incompatible is None]
        try:
            self._plan(model, needed, everything)
        except DoesNotFit as exc:
            return str(exc)
        return ""

    def preview(self, model: str, needed: int) -> str:
        """What a request for `model` would do now, in words (no side effects, no probes)."""
        coord = self.supervisor.coordinators.get(model)
        if coord is not None and coord.state in (STARTING, READY):
            return f"its coordinator is {coord.state} on {', '.join(coord.plan.addresses)}"
        fails = self.fails_now(model, needed)
        if fails:
            return f"a request fails at once (503), and goes on to its fallbacks: {fails}"
        active = self._active()
        offers = [self.shards.offer(s) for s in self.shards.shards.values() if s.usable]
        if len(active) >= self.options.max_coordinators:
            busy = f"{len(active)} coordinator(s) run, the most rpc_max_coordinators allows"
        else:
            try:
                return f"would start a coordinator: {self._plan(model, needed, offers).reason}"
            except DoesNotFit as exc:
                busy = f"the free rpc-servers cannot hold it ({exc})"
        idle = _idle(active)
        if self.options.when_busy == "evict" and idle:
            return (f"{busy}: would stop the least recently used idle coordinator "
                    f"({idle[0].model!r}) first (rpc_when_busy = evict)")
        return (f"{busy}: would wait up to {self.options.wait_timeout:g}s for rpc-servers to "
                f"free up, then answer 429 (rpc_when_busy = {self.options.when_busy})")

    async def start_locked(self, model: str) -> Coordinator | None:
        """Plan and spawn a coordinator, stopping idle ones for room as `rpc_when_busy` allows;
        None when rpc-servers are busy and the request should wait."""
        self.supervisor.check_binary()
        resolved, info = await self.resolve(model)
        if resolved is None:
            raise ModelNotFound(f"model {model!r} not found: no GGUF file resolves for it "
                                "(an Ollama store name, or a GGUF file in a gguf_dirs folder)")
        needed, local_layers = self.options.split_local(resolved.size, info)
        active = self._active()
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
                    self.supervisor.warn(f"leaving out rpc-server {shard.address} for {model!r}: "
                                         f"{shard.incompatible or shard.detail}")
            candidates = [self.shards.offer(s) for s in free if s.usable]
            room = len(active) < self.options.max_coordinators
            try:
                plan = self._plan(model, needed, candidates) if room else None
            except DoesNotFit:
                plan = None
            if plan is not None:
                break
            idle = _idle(active) if self.options.when_busy == "evict" else []
            # (rpc_when_busy = wait: wait for a coordinator to go idle and time out, never cut
            # one short)
            if not idle and not active:  # nothing to wait for: the free rpc-servers are it
                try:
                    self._plan(model, needed, candidates)
                except DoesNotFit as exc:
                    self._unservable(model, exc)
                    raise NoRouteAvailable(f"sharding: {exc}") from None
            if not idle:
                return None
            await self.supervisor.stop_locked(idle[0], f"least recently used; its rpc-servers "
                                                       f"are needed for {model!r}")
            active.remove(idle[0])
        self.unservable.pop(model, None)
        down = frozenset(a for a, s in self.shards.shards.items() if not s.healthy)
        if local_layers:
            plan = attrs.evolve(plan, local_layers=local_layers,
                                layer_count=info.layer_count if info else None,
                                reason=f"{plan.reason}; {local_layers} layer(s) stay in the "
                                       "gateway machine's memory (rpc_local_memory)")
        plan = await self._speedups(model, resolved, plan)
        coord = self.supervisor.spawn_locked(model, resolved, plan)
        coord.down_at_start = down
        return coord

    async def rebalance_locked(self) -> list[str]:
        """Move idle coordinators back where they would have gone: once an rpc-server that was
        down when one was placed answers again (SETTLED_PROBES probes in a row, so one slow
        first probe of a restarted server decides nothing), and the placement it would get now
        (on its own rpc-servers and the free ones) uses it, it is restarted there. A busy one
        is judged when idle; each return is judged once. Returns the models moved."""
        moved = []
        for coord in list(self.supervisor.coordinators.values()):
            back = {a for a in coord.down_at_start if a in self.shards.shards
                    and self.shards.shards[a].usable
                    and self.shards.shards[a].answered >= SETTLED_PROBES}
            if not back or coord.state != READY or coord.in_flight or coord.draining:
                continue
            coord.down_at_start -= back
            offers = [self.shards.offer(s) for s in self.shards.shards.values()  # config order
                      if s.usable or s.owner == coord.id]
            try:
                preferred = self._plan(coord.model, coord.plan.needed, offers)
            except DoesNotFit:
                continue
            if not back & set(preferred.addresses):
                continue
            await self.supervisor.stop_locked(
                coord, f"moving to its preferred rpc-servers {', '.join(preferred.addresses)} "
                       f"({', '.join(sorted(back))} answered again)")
            await self.start_locked(coord.model)
            moved.append(coord.model)
        return moved

    async def replace_locked(self, model: str, after: str) -> str | None:
        """Start `model` again after its coordinator failed (`after` says why); returns why it
        cannot be served, or None (replaced, or left to wait for busy rpc-servers)."""
        try:
            replacement = await self.start_locked(model)
        except (NoRouteAvailable, ModelNotFound) as exc:
            self.unservable.setdefault(model, {"reason": str(exc), "numbers": {}})
            self.unservable[model]["after"] = after
            return self.unservable[model]["reason"]
        if replacement is not None:
            log.info("restarting %s on %s", model, ", ".join(replacement.plan.addresses))
        return None

    async def _speedups(self, model: str, resolved: ResolvedModel, plan: Plan) -> Plan:
        """The plan with its draft model (checked) and whether pipeline parallelism stays on,
        said in its reason."""
        off = pipeline.predict(plan.devices, plan.local_layers, plan.layer_count,
                               self.options.extra_args)
        # what the settings cost, then what the placement's device count does
        costs = pipeline.predict(2, plan.local_layers, plan.layer_count, self.options.extra_args)
        reason = plan.reason + (f"; this costs pipeline parallelism: {costs}" if costs else "")
        if plan.devices < 2:
            reason += "; on one RPC device, so without pipeline parallelism (it needs two)"
        draft_path = ""
        if name := self.options.draft_for(model):
            draft, _info = await self.resolve(name)
            if draft is None:
                raise NoRouteAvailable(f"sharding {model!r}: its draft model {name!r} "
                                       "(rpc_draft_models) resolves to no GGUF file")
            why = await asyncio.to_thread(drafts.mismatch, resolved.path, draft.path)
            if why:
                raise NoRouteAvailable(f"sharding {model!r}: draft model {name!r} "
                                       f"(rpc_draft_models) does not share its vocabulary: {why}")
            draft_path = str(draft.path)
            reason += (f"; draft model {name!r} ({draft.size / 2**20:.1f} MiB) on the gateway "
                       f"machine proposes up to {self.options.draft_max} tokens per pass")
        return attrs.evolve(plan, pipeline_off=off, draft=draft_path, reason=reason)

    def _active(self) -> list[Coordinator]:
        return [c for c in self.supervisor.coordinators.values()
                if c.state in (STARTING, READY)]

    def _plan(self, model: str, needed: int, offers: list[ShardOffer]) -> Plan:
        """Where `model` goes on these rpc-servers (DoesNotFit with the numbers if nowhere)."""
        if self.placer is not None:
            placement = self.placer(model, needed, offers)
        else:
            placement = place(needed, offers, self.options.placement)
        return make_plan(model, needed, offers, placement)

    def _unservable(self, model: str, exc: DoesNotFit) -> None:
        self.unservable.pop(model, None)
        self.unservable[model] = {"reason": str(exc), "numbers": exc.numbers,
                                  "since": time.time()}
        trim(self.unservable)
        self.supervisor.warn(f"model {model!r} is unservable: {exc}")


def _idle(active: list[Coordinator]) -> list[Coordinator]:
    """The ready coordinators with nothing in flight, least recently used first."""
    return sorted((c for c in active if c.state == READY and c.in_flight == 0),
                  key=lambda c: c.last_used)
