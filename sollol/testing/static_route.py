"""A route provider over a fixed list of upstream servers, for tests of the gateway and clients.

No health checks and no discovery: it leases the upstream with the fewest requests in flight
among those that list the model. Real routes ("pool", "sharding") come from plugins.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import attrs

from sollol.errors import ModelNotFound, NoRouteAvailable
from sollol.hookspecs import PolicyFactory, hookimpl
from sollol.models import Api, Backend, BackendState, ModelInfo, RouteRequest, RouteState
from sollol.routes import Lease, Outcome, RouteProvider


def canonical(model: str) -> str:
    """Ollama's canonical model name: no tag means `:latest`."""
    return model if ":" in model.rsplit("/", 1)[-1] else f"{model}:latest"


@attrs.frozen
class Upstream:
    """One server a static route can lease: its id, dialect, root URL and models."""

    id: str
    url: str
    api: Api = "ollama"
    models: tuple[str, ...] = ()
    backend: Backend = attrs.field(init=False)
    names: frozenset[str] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        address = self.url.split("://", 1)[-1].rstrip("/")
        object.__setattr__(self, "backend", Backend(self.id, f"static-{self.api}", address))
        object.__setattr__(self, "names", frozenset(canonical(m) for m in self.models))


@attrs.define
class StaticRoute:
    """A `RouteProvider` that leases the least busy upstream listing the model."""

    name: str
    upstreams: list[Upstream]
    in_flight: dict[str, int] = attrs.field(factory=dict)
    outcomes: list[tuple[str, Outcome]] = attrs.field(factory=list)
    started: bool = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False

    def state(self) -> RouteState:
        return RouteState(self.name, tuple(
            BackendState(u.backend, healthy=True, models=u.names,
                         in_flight=self.in_flight.get(u.id, 0))
            for u in self.upstreams))

    async def list_models(self) -> list[dict[str, Any]]:
        names = dict.fromkeys(canonical(m) for u in self.upstreams for m in u.models)
        return [{"name": n, "model": n, "modified_at": "2026-01-01T00:00:00Z", "size": 0,
                 "digest": "", "details": {"format": "gguf"}} for n in names]

    async def running(self) -> list[dict[str, Any]]:
        return []

    async def model_info(self, model: str) -> ModelInfo | None:
        return None

    async def acquire(self, request: RouteRequest, *, backend: str | None = None,
                      exclude: Collection[str] = ()) -> Lease:
        wanted = canonical(request.model)
        serving = [u for u in self.upstreams if wanted in u.names]
        if not serving:
            known = ", ".join(sorted({n for u in self.upstreams for n in u.names}))
            raise ModelNotFound(f"model {request.model!r} not found (available: {known})")
        free = [u for u in serving if u.id not in exclude and backend in (None, u.id)]
        if not free:
            raise NoRouteAvailable(f"route {self.name}: every node serving {request.model!r} "
                                   f"was tried ({', '.join(sorted(exclude))})", retry_after=1)
        chosen = min(free, key=lambda u: self.in_flight.get(u.id, 0))
        self.in_flight[chosen.id] = self.in_flight.get(chosen.id, 0) + 1

        def release(outcome: Outcome) -> None:
            self.in_flight[chosen.id] -= 1
            self.outcomes.append((chosen.id, outcome))

        return Lease(self.name, chosen.backend, chosen.url, chosen.api, on_release=release)

    def snapshot(self) -> Mapping[str, Any]:
        return {"name": self.name, "nodes": [
            {"id": u.id, "url": u.url, "api": u.api, "models": list(u.models),
             "in_flight": self.in_flight.get(u.id, 0)} for u in self.upstreams]}


class RoutesPlugin:
    """A plugin object registering given routes and policies (register it in a test fixture)."""

    def __init__(self, routes: Iterable[RouteProvider],
                 policies: Mapping[str, PolicyFactory] | None = None) -> None:
        self.routes = list(routes)
        self.policies = dict(policies or {})

    @hookimpl
    def sollol_register_routes(self, register: Callable[[RouteProvider], None]) -> None:
        for route in self.routes:
            register(route)

    @hookimpl
    def sollol_register_policies(self, register: Callable[[str, PolicyFactory], None]) -> None:
        for name, factory in self.policies.items():
            register(name, factory)
