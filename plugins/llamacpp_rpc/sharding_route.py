"""The "sharding" route: leases on llama-server coordinators spread over rpc-servers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import platformdirs

from sollol.core.capabilities import EMBEDDING
from sollol.core.placement import Placement
from sollol.core.router import SHARDING
from sollol.core.units import parse_bytes
from sollol.errors import BinaryNotFound, NotSupported
from sollol.models import (
    Backend,
    ModelInfo,
    ResolvedModel,
    RouteRequest,
    RouteState,
    ShardOffer,
    ShardPlacement,
)
from sollol.routes import Lease, Outcome

from . import procs, shard_members
from .coordinator import READY, STARTING
from .manager import CoordinatorManager, Options
from .plan import place
from .rpc_discovery import KIND
from .rpc_probe import format_version
from .shards import ShardRegistry

if TYPE_CHECKING:
    from sollol.core.runtime import ClusterRuntime

log = logging.getLogger("sollol.sharding")
SUPERVISE_EVERY = 0.5
"""Seconds between checks of coordinator processes and their connections (cheap: /proc reads)."""
NO_EMBEDDINGS = ("the sharding route's llama-server coordinators run without --embeddings, so "
                 "they serve no embeddings (add \"--embeddings\" to rpc_coordinator_args)")


def state_dir(config: Mapping[str, Any] | Any) -> Path:
    """Where coordinator logs, pid files and reports live."""
    configured = config.get("rpc_state_dir")
    if configured:
        return Path(configured).expanduser()
    return Path(platformdirs.user_state_dir("sollol")) / "sharding"


def options_from(config: Any) -> Options:
    return Options(
        mode=config["rpc_coordinator_mode"], idle_timeout=config["rpc_idle_timeout"],
        max_coordinators=config["rpc_max_coordinators"],
        startup_timeout=config["rpc_startup_timeout"], wait_timeout=config["rpc_wait_timeout"],
        queue_size=config["rpc_queue_size"],
        ctx_size=config["rpc_ctx_size"], extra_args=tuple(config["rpc_coordinator_args"]),
        state_dir=state_dir(config), verbose_log=config["rpc_verbose_log"],
        placement=config["rpc_placement"], when_busy=config["rpc_when_busy"],
        local_memory=parse_bytes(config["rpc_local_memory"]),
        link_timeout=config["rpc_link_timeout"],
    )


@attrs.define
class ShardingRoute:
    """RouteProvider for model sharding (see sollol/routes.py for the contract)."""

    cluster: ClusterRuntime
    name: str = SHARDING
    shards: ShardRegistry = attrs.field(init=False)
    manager: CoordinatorManager = attrs.field(init=False)
    _task: asyncio.Task[None] | None = None
    _last_health: float = 0.0
    kinds: tuple[str, ...] = (KIND,)
    pinned: set[str] = attrs.field(factory=set)
    """rpc-servers an operator added (kept through re-discovery and reloads)."""
    removed: set[str] = attrs.field(factory=set)
    """rpc-servers an operator removed (not re-discovered until added again)."""

    def __attrs_post_init__(self) -> None:
        config = self.cluster.config
        self.shards = ShardRegistry(timeout=config["rpc_probe_timeout"],
                                    limits=dict(config["rpc_backend_memory"]),
                                    reserve=parse_bytes(config["rpc_memory_reserve"]))
        self.manager = CoordinatorManager(options_from(config), self.shards, self._resolve,
                                          llama_server=None, placer=self._place)

    def _place(self, model: str, needed: int, offers: list[ShardOffer]) -> ShardPlacement:
        """Ask the `sollol_place_shards` hook (this plugin's own strategy is the last resort)."""
        placement = self.cluster.pm.hook.sollol_place_shards(
            model=model, needed=needed, offers=offers, config=self.cluster.config)
        return placement or place(needed, offers, self.cluster.config["rpc_placement"])

    async def start(self) -> None:
        reaped = procs.reap_orphans(self.manager.pid_dir)
        if reaped:
            self.manager.warn(f"stopped {len(reaped)} orphaned coordinator(s) from an earlier "
                              f"gateway: pids {reaped}")
        await self._find_binaries()
        await self._refresh_backends()
        await self.shards.probe_free()
        self._last_health = time.monotonic()
        self._task = asyncio.create_task(self._loop(), name="sollol-sharding-supervisor")
        for model in self.cluster.config["rpc_preload"]:
            self.manager.preload(model)

    async def _find_binaries(self) -> None:
        from sollol.llamacpp import find_binaries

        from .version import coordinator_version

        try:
            binaries = await asyncio.to_thread(find_binaries, self.cluster.config)
        except BinaryNotFound as exc:
            self.manager.missing_binary = str(exc)
            self.manager.warn(f"sharding is unavailable: {exc}")
            return
        self.manager.llama_server = binaries.llama_server
        self.shards.client_version = await asyncio.to_thread(coordinator_version, binaries)
        if self.shards.client_version is None:
            self.manager.warn(f"could not learn the RPC protocol version of {binaries.rpc_server}"
                              "; rpc-servers are not version-checked")

    async def _refresh_backends(self) -> None:
        backends = await asyncio.to_thread(self.cluster.discover, [KIND])
        self.shards.update_backends(backends)
        if not backends and not self.shards.shards:
            self.manager.warn("no rpc-servers: set rpc_backends (host:port list) or start one "
                              "with `sollol rpc serve`")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.manager.stop_all()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(SUPERVISE_EVERY)
            try:
                await self.manager.supervise()
                # (re-discovery, e.g. an rpc-server started on loopback, is the cluster's job:
                # it calls sync_backends every discovery_interval)
                if time.monotonic() - self._last_health >= self.cluster.config["health_interval"]:
                    self._last_health = time.monotonic()
                    await self.shards.probe_free()
            except Exception:
                log.exception("sharding supervisor pass failed")

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
        held = {c.id: c for c in self.manager.coordinators.values()
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
        detail = self.manager.missing_binary or ""
        return RouteState(self.name, tuple(backends), detail=detail)

    async def list_models(self) -> list[dict[str, Any]]:
        """Running models, plus every GGUF the resolution hooks can name (e.g. Ollama's store)."""
        entries = {c.model: _tag(c.model, c.resolved) for c in self.manager.coordinators.values()
                   if c.state in (STARTING, READY)}
        config, hook = self.cluster.config, self.cluster.pm.hook.sollol_gguf_names
        names = await asyncio.to_thread(
            lambda: sorted({n for found in hook(config=config) for n in found or ()}))
        for name in names:
            if name not in entries and (resolved := await self.cluster.resolve_gguf(name)):
                entries[name] = _tag(name, resolved)
        return list(entries.values())

    async def running(self) -> list[dict[str, Any]]:
        """Ready coordinators, with real times: loaded when it became ready, and expiring
        `rpc_idle_timeout` after its last request (now, while one is in flight)."""
        idle = self.manager.options.idle_timeout
        out = []
        for c in self.manager.coordinators.values():
            if c.state != READY:
                continue
            last = time.time() - (0 if c.in_flight else time.monotonic() - c.last_used)
            out.append({**_tag(c.model, c.resolved), "size_vram": 0,
                        "modified_at": _iso(c.ready_at or c.started_at),
                        "expires_at": _iso(last + idle),
                        "details": {"format": "gguf", "sharded_over": c.plan.addresses}})
        return out

    async def model_info(self, model: str) -> ModelInfo | None:
        return None  # the cluster reads the GGUF header itself

    def lacking(self, needs: frozenset[str]) -> frozenset[str]:
        """What of `needs` the coordinators cannot do: they embed only when started with
        `--embeddings` (in rpc_coordinator_args)."""
        args = self.manager.options.extra_args
        embeds = any(a in ("--embedding", "--embeddings") for a in args)
        return needs & {EMBEDDING} if not embeds else frozenset()

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
        needed = self.manager.split_local(resolved.size, info)[0]
        return Placement(self.name, True, f"its GGUF resolves ({resolved.source}); "
                         f"{self.manager.preview(request.model, needed)}")

    async def acquire(
        self, request: RouteRequest, *, backend: str | None = None, exclude: Collection[str] = ()
    ) -> Lease:
        if self.lacking(request.needs):
            raise NotSupported(f"{request.model!r}: {NO_EMBEDDINGS}")
        coord = await self.manager.checkout(request.key)
        if coord.id in exclude:
            # A retry after this coordinator failed: give the supervisor a moment to notice and
            # replace it. A model has one coordinator, so a live one is returned all the same.
            self.manager.checkin(coord, served=False)
            deadline = time.monotonic() + 5
            while coord.alive() and coord.state == READY and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            coord = await self.manager.checkout(request.key)

        def release(outcome: Outcome) -> None:
            if not outcome.ok and not coord.alive():
                log.warning("request to %s failed: %s", coord.id, coord.exit_reason())
            self.manager.checkin(coord)

        def explain() -> str | None:
            # llama-server aborts the moment a shard fails: by the time a client's connection
            # drops, the process has exited and its log says why.
            if coord.alive():
                return coord.error
            return coord.error or coord.exit_reason()

        return Lease(route=self.name, backend=coord.backend, base_url=coord.base_url,
                     api="openai", on_release=release, explain=explain)

    # ---- membership (the optional Membership interface of sollol/routes.py)

    async def add_backend(self, address: str) -> Mapping[str, Any]:
        return await shard_members.add(self, address)

    async def remove_backend(self, ident: str) -> Mapping[str, Any]:
        return await shard_members.remove(self, ident)

    async def sync_backends(self, backends: Collection[Backend], *,
                            prune: bool) -> Mapping[str, list[str]]:
        return await shard_members.sync(self, backends, prune=prune)

    def reconfigure(self, config: Any) -> Collection[str]:
        """Take new sharding settings; new coordinators use them (running ones keep theirs).
        The state folder holds the running coordinators' pid files: it needs a restart."""
        from .rpc_settings import SETTINGS

        self.shards.timeout = config["rpc_probe_timeout"]
        self.manager.options = attrs.evolve(options_from(config),
                                            state_dir=self.manager.options.state_dir)
        return (*(s.name for s in SETTINGS if s.name != "rpc_state_dir"), "rpc_backends",
                "health_interval")

    def snapshot(self) -> Mapping[str, Any]:
        options = self.manager.options
        return {
            "mode": options.mode, "idle_timeout": options.idle_timeout,
            "max_coordinators": options.max_coordinators,
            "coordinator_protocol": format_version(self.shards.client_version),
            "llama_server": str(self.manager.llama_server) if self.manager.llama_server else None,
            "unavailable": self.manager.missing_binary,
            "link_timeout": options.link_timeout,
            "links_unwatched": self.manager.links_unavailable,
            "backends": [s.as_dict() for s in self.shards.shards.values()],
            "coordinators": [{**c.as_dict(), "starts": self.manager.starts.get(c.model, 0),
                              "log_tail": c.log_tail()}
                             for c in self.manager.coordinators.values()],
            "coordinator_starts": dict(self.manager.starts),
            "unservable": dict(self.manager.unservable),
            "warnings": list(self.manager.warnings),
            "state_dir": str(options.state_dir),
        }


def _tag(model: str, resolved: ResolvedModel) -> dict[str, Any]:
    return {"name": model, "model": model, "size": resolved.size,
            "digest": resolved.digest or "", "details": {"format": "gguf"}}


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")
