"""The running cluster: config, plugins, routes and policy; shared by gateway and library."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from typing import Any

import attrs

from sollol.config import Config, Setting
from sollol.core.aliases import Alias, aliases
from sollol.core.events import EventLog
from sollol.core.live_memory import LiveMemory
from sollol.core.loading import load as load
from sollol.core.membership import LiveMembership
from sollol.core.names import canonical_model, closest
from sollol.core.placement import Placement, from_state
from sollol.core.plugin_manager import SollolPluginManager, collect_named
from sollol.core.policy_chain import build_policy
from sollol.core.redact import routes_redactor
from sollol.core.router import POOL, SHARDING, choose_route
from sollol.errors import ConfigError, ModelNotFound, NoRouteAvailable, NotSupported, PluginError
from sollol.models import (
    Backend,
    BackendKind,
    ModelInfo,
    ResolvedModel,
    RouteDecision,
    RouteEvent,
    RouteRequest,
    RouteState,
    join_host_port,
    split_host_port,
)
from sollol.routes import Lease, Policy, RouteProvider

log = logging.getLogger("sollol")
KNOWN_MODELS_SECONDS = 5.0
"""How long the model names behind "did you mean" are reused."""
MODEL_INFO_CACHE = 256
"""Most models whose GGUF metadata is kept in memory."""


@attrs.define
class ClusterRuntime:
    """Routes, policy and events for one gateway or one embedded `sollol.Cluster` user."""

    config: Config
    pm: SollolPluginManager
    events: EventLog = attrs.field(factory=EventLog)
    routes: dict[str, RouteProvider] = attrs.field(factory=dict)
    kinds: dict[str, BackendKind] = attrs.field(factory=dict)
    policy: Policy | None = None
    started: bool = False
    reloader: Callable[[], Config] | None = None
    """Re-reads the config (file, env, the same overrides) for a reload; None: cannot reload."""
    live_memory: LiveMemory = attrs.field(factory=LiveMemory)
    """Device memory machines report themselves, by backend id (sollol/core/live_memory.py)."""
    _discovery: asyncio.Task[None] | None = None
    _model_info: OrderedDict[str, tuple[tuple[Any, ...], ModelInfo | None]] = attrs.field(
        factory=OrderedDict)
    """GGUF metadata by canonical model name, least recently used first (MODEL_INFO_CACHE)."""
    _known: tuple[float, list[str]] | None = None
    """Model names for "did you mean", and when they were listed."""

    @classmethod
    def from_config(
        cls, *, path: os.PathLike[str] | str | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> ClusterRuntime:
        config, pm = load(path=path, overrides=overrides)
        return cls(config=config, pm=pm,
                   reloader=lambda: load(path=path, overrides=overrides)[0])

    async def start(self) -> None:
        """Collect kinds, policy and routes from plugins, then start every route."""
        kinds = collect_named(self.pm, "sollol_register_backend_kinds", "backend kind")
        self.kinds = {name: kind for name, (kind, _plugin) in kinds.items()}
        self.policy = self._make_policy()
        providers = collect_named(self.pm, "sollol_register_routes", "route", cluster=self)
        self.routes = {name: provider for name, (provider, _) in providers.items()}
        started: list[RouteProvider] = []
        try:
            for provider in self.routes.values():
                await provider.start()
                started.append(provider)
            await _await_all(self.pm.hook.sollol_startup(cluster=self))
        except BaseException:
            for provider in reversed(started):
                await provider.stop()
            raise
        self.started = True
        if self.membership.members():
            self._discovery = asyncio.create_task(self.membership.loop(),
                                                  name="sollol-discovery")

    async def reload(self) -> dict[str, Any]:
        """Re-read the config and apply node and rpc-server changes (see sollol.core.membership)."""
        if self.reloader is None:
            return {"ok": False, "error": "this cluster was built from a Config object; "
                                          "there is nothing to re-read"}
        return await self.membership.reload(self.reloader, self._adopt)

    def _adopt(self, config: Config) -> None:
        self.config = config

    @property
    def membership(self) -> LiveMembership:
        """Re-discovery and reloads for the routes whose backends can change."""
        return LiveMembership(routes=self.routes, discover=self.discover,
                              config=lambda: self.config)

    async def stop(self) -> None:
        """Run shutdown hooks, then stop every route (each even if another fails)."""
        if not self.started:
            return
        self.started = False
        if self._discovery is not None:
            self._discovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._discovery
            self._discovery = None
        try:
            await _await_all(self.pm.hook.sollol_shutdown(cluster=self))
        finally:
            for provider in reversed(list(self.routes.values())):
                try:
                    await provider.stop()
                except Exception:
                    log.exception("route %s failed to stop cleanly", provider.name)

    async def __aenter__(self) -> ClusterRuntime:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _make_policy(self) -> Policy | None:
        policies = collect_named(self.pm, "sollol_register_policies", "routing policy")
        name = self.config["routing_policy"]
        if name not in policies:
            if self.config["model_sharding_enabled"] and self.config["task_distribution_enabled"]:
                known = ", ".join(sorted(policies)) or "none (is the policies plugin disabled?)"
                raise ConfigError("routing_policy", name, f"a registered policy: {known}")
            return None
        return build_policy(name, policies, self.config["policy_settings"])

    def discover(self, kinds: Collection[str] | None = None) -> list[Backend]:
        """Backends from every discovery hook, merged by id, optionally only of some kinds."""
        found: dict[str, Backend] = {}
        for result in self.pm.hook.sollol_discover_backends(config=self.config):
            for backend in result or ():
                if self.kinds and backend.kind not in self.kinds:
                    msg = (f"backend {backend.id} has kind {backend.kind!r}, "
                           "which no plugin registers")
                    raise PluginError(msg)
                found.setdefault(backend.id, backend)
        return [b for b in found.values() if kinds is None or b.kind in kinds]

    def route_states(self) -> dict[str, RouteState]:
        return {name: provider.state() for name, provider in self.routes.items()}

    async def resolve_gguf(self, model: str) -> ResolvedModel | None:
        """The GGUF file behind `model`, from the first resolution hook that knows it."""
        return await asyncio.to_thread(
            self.pm.hook.sollol_resolve_gguf, model=model, config=self.config
        )

    async def model_info(self, model: str) -> ModelInfo | None:
        """Size facts for `model`: GGUF metadata when a file resolves, else what a route reports.

        Cached while the file (path, size, mtime) is unchanged; a miss is never cached, so a
        transient failure does not stick.
        """
        from sollol.core.gguf_info import read_model_info

        resolved = await self.resolve_gguf(model)
        if resolved is not None:
            stat = resolved.path.stat()
            key = (str(resolved.path), stat.st_size, stat.st_mtime_ns)
            name = canonical_model(model)
            cached = self._model_info.get(name)
            if cached is not None and cached[0] == key:
                self._model_info.move_to_end(name)
                return cached[1]
            info = await asyncio.to_thread(read_model_info, resolved.path, model)
            self._model_info[name] = (key, info)
            self._model_info.move_to_end(name)
            if len(self._model_info) > MODEL_INFO_CACHE:
                self._model_info.popitem(last=False)
            return info
        for provider in self.routes.values():
            info = await provider.model_info(model)
            if info is not None:
                return info
        return None

    async def decide(self, request: RouteRequest) -> RouteDecision:
        """Pick the route for a request by the mode matrix and the configured policy, among
        the routes that can serve the model (an unknown model gets "did you mean")."""
        return await self._decide(request)

    async def _decide(self, request: RouteRequest,
                      visible: Callable[[str], bool] | None = None) -> RouteDecision:
        """`decide`, suggesting only names `visible` passes (the dispatcher's view for an
        access key, sollol.core.scope; private so the plugin API keeps its signature)."""
        sharding = self.config["model_sharding_enabled"]
        distribution = self.config["task_distribution_enabled"]
        places = await self.placements(request) if sharding or distribution else {}
        try:
            able = [p for p in places.values() if not p.excluded]
            model = (await self.model_info(request.model)
                     if sharding and distribution and able else None)
            return choose_route(request, sharding=sharding, distribution=distribution,
                                policy=self.policy, model=model, routes=self.route_states(),
                                placements=places)
        except ModelNotFound as exc:
            raise await self._not_found(exc, request.model, visible) from None

    async def decide_for_alias(self, request: RouteRequest, alias: Alias) -> RouteDecision:
        """The decision for an alias that fixes its route (or pool nodes): that route, if it
        can serve the model."""
        route = alias.route or POOL
        if route not in self.routes:
            known = ", ".join(sorted(self.routes)) or "none"
            raise NoRouteAvailable(f"alias {alias.name!r} names the {route} route, which is not "
                                   f"running (routes: {known})")
        place = (await self.placements(request)).get(route)
        if place is not None and place.missing:
            raise NotSupported(f"alias {alias.name!r}: the {route} route cannot serve "
                               f"{request.model!r} ({place.reason})")
        if place is not None and place.holds is False:
            raise ModelNotFound(f"alias {alias.name!r}: model {request.model!r} is not on the "
                                f"{route} route ({place.reason})")
        nodes = f" (nodes {', '.join(alias.nodes)})" if alias.nodes else ""
        return RouteDecision(route, policy="alias", reason=(
            f"alias {alias.name!r} is {alias.model} on the {route} route{nodes}"),
            placement={route: place.as_dict()} if place is not None else {})

    async def explain(self, model: str, *, endpoint: str = "chat",
                      context_length: int | None = None) -> dict[str, Any]:
        """What a request naming `model` would do now, through its alias and fallbacks, as
        `RouteDecision.as_dict()` with `alias_of`, `fallback` and `tried`; the error the
        request would get is raised. Nothing is sent (`/sollol/route`; sollol.core.explain)."""
        from sollol.core.explain import explain

        return await explain(self, model, context=context_length, endpoint=endpoint)

    def outside(self, alias: Alias) -> list[str]:
        """Ids of the pool backends an alias's `nodes` leave out."""
        pool = self.routes.get(POOL)
        if pool is None:
            return []
        wanted = {_authority(n) for n in alias.nodes}
        return [b.backend.id for b in pool.state().backends
                if b.backend.id not in wanted and _authority(b.backend.address) not in wanted]

    async def placements(self, request: RouteRequest) -> dict[str, Placement]:
        """Which enabled routes could serve `request`, and why (routes answer for themselves
        through an optional `placement(request)` method, else from their backends' lists)."""
        enabled = {POOL: self.config["task_distribution_enabled"],
                   SHARDING: self.config["model_sharding_enabled"]}
        out: dict[str, Placement] = {}
        for name, provider in self.routes.items():
            if not enabled.get(name, False):
                continue
            place = getattr(provider, "placement", None)
            out[name] = (await place(request) if place is not None
                         else from_state(provider.state(), request))
        return out

    async def known_models(self) -> list[str]:
        """Every model name any route lists, for "did you mean" (kept for a few seconds: a
        burst of unknown names must not list every route's models each time)."""
        now = time.monotonic()
        if self._known is not None and now - self._known[0] < KNOWN_MODELS_SECONDS:
            return self._known[1]
        names: dict[str, None] = {}
        for provider in self.routes.values():
            try:
                entries = await provider.list_models()
            except Exception:  # a listing that fails must not turn a 404 into a 500
                log.debug("listing models of route %s failed", provider.name, exc_info=True)
                continue
            names.update(dict.fromkeys(str(e.get("name") or e.get("model")) for e in entries
                                       if e.get("name") or e.get("model")))
        names.update(dict.fromkeys(a.name for a in aliases(self.config).values()))
        self._known = (now, list(names))
        return self._known[1]

    async def not_found(self, exc: ModelNotFound, model: str) -> ModelNotFound:
        """`exc` with the closest model names from every route, if any look alike."""
        return await self._not_found(exc, model)

    async def _not_found(self, exc: ModelNotFound, model: str,
                         visible: Callable[[str], bool] | None = None) -> ModelNotFound:
        """`not_found` among the names `visible` passes (those an access key may use)."""
        message = str(exc)
        if "did you mean" in message:
            return exc
        known = await self.known_models()
        close = closest(model, known if visible is None else [n for n in known if visible(n)])
        if close:
            message += f"; did you mean {' or '.join(repr(c) for c in close)}?"
        return ModelNotFound(message)

    async def acquire(
        self, request: RouteRequest, decision: RouteDecision, *, exclude: Collection[str] = ()
    ) -> Lease:
        """A lease on an upstream of the decided route."""
        return await self._acquire(request, decision, exclude=exclude)

    async def _acquire(self, request: RouteRequest, decision: RouteDecision, *,
                       exclude: Collection[str] = (),
                       visible: Callable[[str], bool] | None = None) -> Lease:
        """`acquire`, suggesting only names `visible` passes (as `_decide`)."""
        provider = self.routes.get(decision.route)
        if provider is None:
            raise NoRouteAvailable(f"route {decision.route!r} is not available")
        try:
            return await provider.acquire(request, backend=decision.backend, exclude=exclude)
        except ModelNotFound as exc:
            raise await self._not_found(exc, request.model, visible) from None

    def record(self, event: RouteEvent) -> None:
        """Log a finished request and tell `sollol_request_routed` implementations (a node's
        error text redacted of node secrets first: it reaches logs and dashboards)."""
        if event.error:
            event = routes_redactor(self.routes.values()).event(event)
        self.events.append(event)
        try:
            self.pm.hook.sollol_request_routed(event=event, cluster=self)
        except Exception:
            log.exception("a sollol_request_routed hook failed")

    def snapshot(self) -> dict[str, Any]:
        """The cluster's state as plain data."""
        return {
            "modes": {
                "model_sharding_enabled": self.config["model_sharding_enabled"],
                "task_distribution_enabled": self.config["task_distribution_enabled"],
            },
            "policy": self.policy.name if self.policy else None,
            "routes": {name: dict(p.snapshot()) for name, p in self.routes.items()},
            "recent": [e.as_dict() for e in self.events.recent(50)],
        }


def _authority(address: str) -> str:
    """"host:port" of an address or URL (the pool's default port when it has none)."""
    try:
        host, port = split_host_port(address, default_port=11434)
    except ValueError:
        return address
    return join_host_port(host, port)


async def _await_all(results: list[Any]) -> None:
    for result in results:
        if inspect.isawaitable(result):
            await result


__all__ = ["ClusterRuntime", "Setting", "load"]


def __getattr__(name: str) -> object:
    if name == "Cluster":  # the name before the layered tree (plugin API 2.x)
        import warnings
        warnings.warn("Cluster is now ClusterRuntime", DeprecationWarning, stacklevel=2)
        return ClusterRuntime
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
