"""The "sharding" route: leases on llama-server coordinators spread over rpc-servers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import attrs

from sollol.core.capabilities import EMBEDDING
from sollol.core.names import canonical, canonical_model
from sollol.core.units import parse_bytes
from sollol.errors import NotSupported, SollolError
from sollol.models import (
    Backend,
    ModelInfo,
    ResolvedModel,
    RouteRequest,
    RouteState,
    ShardOffer,
    ShardPlacement,
)
from sollol.routes import SHARDING, Lease, Outcome, Placement

from . import rpc_devices
from .coordinator import READY, STARTING
from .options import options_from, state_dir
from .plan import place
from .rpc_discovery import KIND
from .rpc_probe import format_version
from .scheduler import Scheduler
from .shard_members import ShardMembers
from .shards import ShardRegistry
from .supervisor import Supervisor

if TYPE_CHECKING:
    from sollol.core.runtime import ClusterRuntime

log = logging.getLogger("sollol.sharding")
GO_MAX_DURATION_S = (2**63 - 1) / 1e9
"""Ollama keeps a model with a negative keep_alive for Go's longest duration (~292 years):
its `expires_at` is that far ahead."""
RESTART_KEYS = frozenset({"rpc_state_dir"})
"""The sharding settings a reload cannot apply: the state folder holds the running
coordinators' pid files."""
NO_EMBEDDINGS = ("the sharding route's llama-server coordinators run without --embeddings, so "
                 "they serve no embeddings (add \"--embeddings\" to rpc_coordinator_args)")


NO_SHARDS = "no rpc-servers: "
"""How the start-up warning begins; it is taken back when rpc-servers arrive."""


@attrs.define
class ShardingRoute:
    """RouteProvider for model sharding (see sollol/routes.py for the contract): the registry of
    rpc-servers and its members, a scheduler that hands coordinators to requests, and a
    supervisor that runs them."""

    cluster: ClusterRuntime
    name: str = SHARDING
    kinds: tuple[str, ...] = (KIND,)
    shards: ShardRegistry = attrs.field(init=False)
    members: ShardMembers = attrs.field(init=False)
    supervisor: Supervisor = attrs.field(init=False)
    scheduler: Scheduler = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        config = self.cluster.config
        options = options_from(config)
        self.shards = ShardRegistry(timeout=config["rpc_probe_timeout"],
                                    limits=dict(config["rpc_backend_memory"]),
                                    reserve=parse_bytes(config["rpc_memory_reserve"]),
                                    names_dir=state_dir(config) / "rpc-servers")
        self.supervisor = Supervisor(options, self.shards)
        self.scheduler = Scheduler(options, self.shards, self.supervisor, self._resolve,
                                   placer=self._place)
        self.supervisor.bind(self.scheduler)  # restarts are placed, releases wake the queue
        self.members = ShardMembers(self.shards, drain=self.supervisor.drain,
                                    joined=self._joined)

    def _joined(self) -> None:
        """rpc-servers arrived (config, discovery, `sollol join`, Ray): the warning that there
        were none is stale, and models waiting for them may start."""
        self.supervisor.warnings = [w for w in self.supervisor.warnings if NO_SHARDS not in w]
        self.scheduler.wake()

    def _place(self, model: str, needed: int, offers: list[ShardOffer]) -> ShardPlacement:
        """Ask the `sollol_place_shards` hook (this plugin's own strategy is the last resort)."""
        placement = self.cluster.pm.hook.sollol_place_shards(
            model=model, needed=needed, offers=offers, config=self.cluster.config)
        return placement or place(needed, offers, self.cluster.config["rpc_placement"])

    async def start(self) -> None:
        self.supervisor.reap_orphans()
        await self.supervisor.find_binaries(self.cluster.config)
        await self._refresh_backends()
        await self.shards.probe_free()
        self.supervisor.watch(lambda: self.cluster.config["health_interval"])
        for model in self.cluster.config["rpc_preload"]:
            self.scheduler.preload(model)

    async def _refresh_backends(self) -> None:
        backends = await asyncio.to_thread(self.cluster.discover, [KIND])
        self.shards.update_backends(backends)
        if not backends and not self.shards.shards:
            self.supervisor.warn(f"{NO_SHARDS}set rpc_backends (host:port list) or start one "
                                 "with `sollol rpc serve`")

    async def stop(self) -> None:
        await self.supervisor.stop_all()

    async def _resolve(self, model: str) -> tuple[ResolvedModel | None, ModelInfo | None]:
        resolved = await self.cluster.resolve_gguf(model)
        if resolved is None:
            return None, None
        try:
            info = await self.cluster.model_info(model)
        except Exception as exc:  # sizes are an estimate; a header we can't read is not fatal
            log.warning("could not read GGUF metadata of %s: %s", model, exc)
            info = None
        return resolved, info

    # ------------------------------------------------------------------------ the contract

    def state(self) -> RouteState:
        held = {c.id: c for c in self.supervisor.coordinators.values()
                if c.state in (STARTING, READY)}
        backends = []
        for shard in self.shards.shards.values():
            coord = held.get(shard.owner or "")
            if coord is not None:
                # health follows the coordinator that holds it (we must not probe it)
                state = attrs.evolve(shard.state(coord.in_flight, frozenset({coord.model})),
                                     healthy=coord.alive(),
                                     detail=f"held by {coord.id} ({coord.state})")
            else:
                state = shard.state()
            backends.append(state)
        detail = self.supervisor.missing_binary or ""
        return RouteState(self.name, tuple(backends), detail=detail)

    async def list_models(self) -> list[dict[str, Any]]:
        """Running models, plus every GGUF the resolution hooks can name (e.g. Ollama's store).

        One entry per model under its full name (`bigmodel:latest`), loaded or not: a client
        must not see the name change when the model loads. Details come from the GGUF header.
        """
        entries: dict[str, dict[str, Any]] = {}
        for c in self.supervisor.coordinators.values():
            if c.state in (STARTING, READY):
                entries.setdefault(canonical(c.model), await self._tag(c.model, c.resolved))
        config, hook = self.cluster.config, self.cluster.pm.hook.sollol_gguf_names
        names = await asyncio.to_thread(
            lambda: sorted({n for found in hook(config=config) for n in found or ()}))
        for name in names:
            if canonical(name) not in entries and (
                    resolved := await self.cluster.resolve_gguf(name)):
                entries[canonical(name)] = await self._tag(name, resolved)
        return list(entries.values())

    async def _tag(self, model: str, resolved: ResolvedModel) -> dict[str, Any]:
        """A model as Ollama's `/api/tags` lists it, with the family, size and quantization."""
        name = canonical(model)
        details: dict[str, Any] = {"format": "gguf"}
        try:
            info = await self.cluster.model_info(model)
        except SollolError:  # a broken file is reported when it is asked for, not in listings
            info = None
        if info is not None:
            family = info.architecture or ""
            details.update(family=family, families=[family] if family else [],
                           parameter_size=_parameter_size(info.parameter_count),
                           quantization_level=info.quantization or "")
        return {"name": name, "model": name, "size": resolved.size,
                "digest": resolved.digest or "", "details": details}

    async def running(self) -> list[dict[str, Any]]:
        """Ready coordinators, with real times: loaded when it became ready, and expiring
        `rpc_idle_timeout` after its last request (now, while one is in flight)."""
        out = []
        for c in self.supervisor.coordinators.values():
            if c.state != READY:
                continue
            last = time.time() - (0 if c.in_flight else time.monotonic() - c.last_used)
            tag = await self._tag(c.model, c.resolved)
            idle = min(self.supervisor.idle_limit(c), GO_MAX_DURATION_S)
            out.append({**tag, "size_vram": 0,
                        "modified_at": _iso(c.ready_at or c.started_at),
                        "expires_at": _iso(last + idle),
                        "details": {**tag["details"], "sharded_over": c.plan.addresses}})
        return out

    async def model_info(self, model: str) -> ModelInfo | None:
        return None  # the cluster reads the GGUF header itself

    def lacking(self, needs: frozenset[str]) -> frozenset[str]:
        """What of `needs` the coordinators cannot do: they embed only when started with
        `--embeddings` (in rpc_coordinator_args)."""
        return needs & {EMBEDDING} if not self.scheduler.options.embeds else frozenset()

    async def placement(self, request: RouteRequest) -> Placement:
        """Whether the model's GGUF resolves here (what sharding needs) and the coordinators
        can do what the request needs."""
        resolved = await self.cluster.resolve_gguf(request.model)
        if resolved is None:
            return Placement(self.name, False, "no GGUF file resolves for it on the gateway "
                             "machine (sharding reads it from Ollama's store or a path)")
        missing = self.lacking(request.needs)
        if missing:
            return Placement(self.name, True, NO_EMBEDDINGS, missing)
        _resolved, info = await self._resolve(request.model)
        needed = self.scheduler.options.split_local(resolved.size, info)[0]
        return Placement(self.name, True, f"its GGUF resolves ({resolved.source}); "
                         # by the key coordinators are kept under: "m:latest" is "m"'s
                         f"{self.scheduler.preview(request.key, needed)}",
                         fails_now=self.scheduler.fails_now(request.key, needed))

    async def acquire(
        self, request: RouteRequest, *, backend: str | None = None, exclude: Collection[str] = ()
    ) -> Lease:
        if self.lacking(request.needs):
            raise NotSupported(f"{request.model!r}: {NO_EMBEDDINGS}")
        coord = await self.scheduler.checkout(request.key, avoid=exclude)

        def release(outcome: Outcome) -> None:
            if not outcome.ok and not coord.alive():
                log.warning("request to %s failed: %s", coord.id, coord.exit_reason())
            self.scheduler.checkin(coord)

        def explain() -> str | None:
            # llama-server aborts the moment a shard fails: by the time a client's connection
            # drops, the process has exited and its log says why.
            if coord.alive():
                return coord.error
            return coord.error or coord.exit_reason()

        return Lease(route=self.name, backend=coord.backend, base_url=coord.base_url,
                     api="openai", on_release=release, explain=explain)

    # ---- keep_alive (the optional KeepAlive interface of sollol/routes.py)

    def keep_alive(self, model: str, seconds: float | None) -> None:
        """Ollama's `keep_alive` for a request just handed a coordinator: how long it stays
        loaded after its last request (0: stop it once idle; None: rpc_idle_timeout)."""
        coord = self.supervisor.coordinators.get(canonical_model(model))
        if coord is not None:
            coord.keep_alive = seconds

    async def unload(self, model: str) -> bool:
        """Stop the model's coordinator (`keep_alive: 0` with no prompt, `sollol shard
        unload`); its rpc-servers come free for other models."""
        return await self.supervisor.unload(canonical_model(model), "unloaded on request")

    # ---- membership (the optional Membership interface of sollol/routes.py)

    async def add_backend(self, address: str) -> Mapping[str, Any]:
        return await self.members.add(address)

    async def remove_backend(self, ident: str) -> Mapping[str, Any]:
        return await self.members.remove(ident)

    async def sync_backends(self, backends: Collection[Backend], *,
                            prune: bool) -> Mapping[str, list[str]]:
        return await self.members.sync(backends, prune=prune)

    def reconfigure(self, config: Any) -> Collection[str]:
        """Take new sharding settings; new coordinators use them (running ones keep theirs).
        Every setting but RESTART_KEYS applies here (models new to `rpc_preload` start now)."""
        from .rpc_settings import SETTINGS

        self.shards.timeout = config["rpc_probe_timeout"]
        self.shards.limits = dict(config["rpc_backend_memory"])
        self.shards.reserve = parse_bytes(config["rpc_memory_reserve"])
        options = attrs.evolve(options_from(config),
                               state_dir=self.supervisor.options.state_dir)
        self.supervisor.options = self.scheduler.options = options
        self.scheduler.wake()  # more coordinators or room may be allowed now
        for model in config["rpc_preload"]:
            if model not in self.supervisor.coordinators:
                self.scheduler.preload(model)
        return (*(s.name for s in SETTINGS if s.name not in RESTART_KEYS), "rpc_backends",
                "health_interval")

    def snapshot(self) -> Mapping[str, Any]:
        options, supervisor = self.supervisor.options, self.supervisor
        return rpc_devices.annotate({
            "mode": options.mode, "idle_timeout": options.idle_timeout,
            "max_coordinators": options.max_coordinators,
            "coordinator_protocol": format_version(self.shards.client_version),
            "llama_server": str(supervisor.llama_server) if supervisor.llama_server else None,
            "unavailable": supervisor.missing_binary,
            "link_timeout": options.link_timeout,
            "links_unwatched": supervisor.links_unavailable,
            "backends": [s.as_dict() for s in self.shards.shards.values()],
            "coordinators": [{**c.as_dict(), "starts": supervisor.starts.get(c.model, 0),
                              "log_tail": c.log_tail()}
                             for c in supervisor.coordinators.values()],
            "coordinator_starts": dict(supervisor.starts),
            "unservable": dict(self.scheduler.unservable),
            "scheduler": {"waiting": self.scheduler.waiting, "queue_size": options.queue_size,
                          "slots_per_coordinator": options.parallel or None},
            "warnings": list(supervisor.warnings),
            "state_dir": str(options.state_dir),
        })


def _parameter_size(count: int | None) -> str:
    """Ollama's way of writing a parameter count: `7.2B`, `135M`."""
    if not count:
        return ""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.1f}{unit}".replace(".0", "")
    return str(count)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")
