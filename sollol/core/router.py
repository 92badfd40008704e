"""The hybrid router's mode matrix: pure decision logic, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from sollol.core.capabilities import describe
from sollol.errors import ModelNotFound, NoRouteAvailable, NotSupported
from sollol.models import ModelInfo, RouteDecision, RouteRequest, RouteState
from sollol.routes import POOL, SHARDING, Placement, Policy

__all__ = ["POOL", "SHARDING", "choose_route"]  # the route names live in sollol.routes


def choose_route(
    request: RouteRequest,
    *,
    sharding: bool,
    distribution: bool,
    policy: Policy | None,
    model: ModelInfo | None,
    routes: Mapping[str, RouteState],
    placements: Mapping[str, Placement] | None = None,
) -> RouteDecision:
    """Apply the mode matrix; with both modes on, the configured policy decides among the
    routes that can serve the model (`placements`; a route that certainly cannot is never
    chosen, and when only one can, it is chosen without asking the policy)."""
    places = dict(placements or {})
    if sharding and distribution:
        if policy is None:
            msg = "sharding and distribution are both on, but no routing policy is configured"
            raise NoRouteAvailable(msg)
        open_routes = [p for name, p in places.items() if name in (POOL, SHARDING)]
        _refuse_unservable(request, open_routes)
        if open_routes:
            able = [p for p in open_routes if not p.excluded]
            if len(able) == 1 and all(p.excluded for p in open_routes if p is not able[0]):
                return _only_route(request, able[0], open_routes, policy, model, routes, places)
        decision = policy.decide(request, model, routes)
        return attrs.evolve(decision, placement=_numbers(places)) if places else decision
    if sharding:
        _require(routes, SHARDING, "model_sharding_enabled")
        _refuse_unservable(request, [p for n, p in places.items() if n == SHARDING])
        return RouteDecision(SHARDING, policy="mode", reason="only model sharding is enabled",
                             placement=_numbers(places))
    if distribution:
        _require(routes, POOL, "task_distribution_enabled")
        _refuse_unservable(request, [p for n, p in places.items() if n == POOL])
        return RouteDecision(POOL, policy="mode", reason="only task distribution is enabled",
                             placement=_numbers(places))
    pool = _require(routes, POOL, "the single-node mode")
    if not pool.backends:
        raise NoRouteAvailable("single-node mode: no node is configured (set ollama_nodes)")
    node = pool.backends[0]
    return RouteDecision(
        POOL, policy="mode", backend=node.backend.id,
        reason=f"sharding and distribution are off: the single node {node.backend.address}",
    )


def _require(routes: Mapping[str, RouteState], name: str, why: str) -> RouteState:
    try:
        return routes[name]
    except KeyError:
        known = ", ".join(sorted(routes)) or "none"
        msg = f"{why} needs the {name!r} route, but no plugin provides it (routes: {known})"
        raise NoRouteAvailable(msg) from None


def _refuse_unservable(request: RouteRequest, places: list[Placement]) -> None:
    """No route holds the model (404), or those holding it lack a capability (501)."""
    if not places or any(p.holds is not False and not p.missing for p in places):
        return
    holders = [p for p in places if p.holds]
    why = "; ".join(f"{p.route}: {p.reason}" for p in places)
    if holders:
        needs = frozenset().union(*(p.missing for p in holders))
        raise NotSupported(f"no route holding {request.model!r} supports "
                           f"{describe(needs)} ({why})")
    raise ModelNotFound(f"model {request.model!r} not found on any route ({why})")


def _only_route(request: RouteRequest, only: Placement, places: list[Placement], policy: Policy,
                model: ModelInfo | None, routes: Mapping[str, RouteState],
                placements: Mapping[str, Placement]) -> RouteDecision:
    """One route can serve: it serves. The policy's own reason is kept when it agrees (a
    decision that reads "too big for one node: sharding" says more than "only sharding")."""
    try:
        preferred: RouteDecision | None = policy.decide(request, model, routes)
    except NoRouteAvailable:
        preferred = None
    if preferred is not None and preferred.route == only.route:
        return attrs.evolve(preferred, placement=_numbers(placements))
    others = "; ".join(f"the {p.route} route cannot ({p.reason})" for p in places
                       if p is not only)
    reason = f"only the {only.route} route can serve {request.model} ({only.reason}); {others}"
    if preferred is not None:
        reason += f" (policy {policy.name} would have chosen the {preferred.route} route)"
    return _placed(only.route, policy.name, reason, routes, placements)


def _placed(route: str, policy: str, reason: str, routes: Mapping[str, RouteState],
            places: Mapping[str, Placement]) -> RouteDecision:
    state = routes.get(route)
    placement = _numbers(places)
    if state is not None and not state.available:
        detail = f": {state.detail}" if state.detail else ""
        raise NoRouteAvailable(f"{reason}, but the {route} route has no healthy backend "
                               f"(0 of {len(state.backends)} healthy){detail}",
                               numbers={"placement": placement})
    return RouteDecision(route, policy=policy, reason=reason, placement=placement)


def _numbers(places: Mapping[str, Placement]) -> dict[str, Any]:
    return {name: p.as_dict() for name, p in places.items()}
