"""The hybrid router's mode matrix: pure decision logic, no I/O."""

from __future__ import annotations

from collections.abc import Mapping

from sollol.errors import NoRouteAvailable
from sollol.models import ModelInfo, RouteDecision, RouteRequest, RouteState
from sollol.routes import Policy

POOL = "pool"
"""Route name for task distribution: whole models on a pool of nodes."""
SHARDING = "sharding"
"""Route name for model sharding: one model over llama.cpp rpc-servers."""


def choose_route(
    request: RouteRequest,
    *,
    sharding: bool,
    distribution: bool,
    policy: Policy | None,
    model: ModelInfo | None,
    routes: Mapping[str, RouteState],
) -> RouteDecision:
    """Apply the mode matrix; with both modes on, the configured policy decides."""
    if sharding and distribution:
        if policy is None:
            msg = "sharding and distribution are both on, but no routing policy is configured"
            raise NoRouteAvailable(msg)
        return policy.decide(request, model, routes)
    if sharding:
        _require(routes, SHARDING, "model_sharding_enabled")
        return RouteDecision(SHARDING, policy="mode", reason="only model sharding is enabled")
    if distribution:
        _require(routes, POOL, "task_distribution_enabled")
        return RouteDecision(POOL, policy="mode", reason="only task distribution is enabled")
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
