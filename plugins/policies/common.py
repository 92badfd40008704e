"""Pieces the policies share: checking the chosen route is up, and the unknown-size fallback."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sollol.errors import NoRouteAvailable
from sollol.models import RouteDecision, RouteState
from sollol.routes import POOL, SHARDING

UNKNOWN_CHOICES = (POOL, SHARDING, "error")
"""What a policy does with a model whose size nobody reported (`unknown = ...`)."""

SOURCE_HINT = "no GGUF file resolved for it and no pool node reported its size"


def route_down(routes: Mapping[str, RouteState], name: str) -> str | None:
    """Why route `name` cannot take a request now, or None when it can."""
    state = routes.get(name)
    if state is None:
        known = ", ".join(sorted(routes)) or "none"
        return f"no plugin provides the {name!r} route (routes: {known})"
    if not state.available:
        total = len(state.backends)
        detail = f": {state.detail}" if state.detail else ""
        return f"the {name} route has no healthy backend (0 of {total} healthy){detail}"
    return None


def decided(
    route: str, policy: str, reason: str, routes: Mapping[str, RouteState],
    numbers: Mapping[str, Any], backend: str | None = None,
) -> RouteDecision:
    """A decision for `route`, or NoRouteAvailable (reason + why the route is down)."""
    problem = route_down(routes, route)
    if problem is not None:
        raise NoRouteAvailable(f"{reason}, but {problem}", numbers=numbers)
    return RouteDecision(route, policy=policy, reason=reason, backend=backend, numbers=numbers)


def unknown_size(
    policy: str, fallback: str, model: str, what: str, routes: Mapping[str, RouteState],
    numbers: Mapping[str, Any],
) -> RouteDecision:
    """The documented fallback for a model whose `what` (e.g. "parameter count") is unknown."""
    numbers = {**numbers, "size_known": False, "unknown_fallback": fallback}
    start = f"the {what} of {model} is unknown ({SOURCE_HINT})"
    if fallback == "error":
        msg = (f"{start}; policy_settings.{policy}.unknown = \"error\" refuses such models "
               "(set it to \"pool\" or \"sharding\" to route them anyway)")
        raise NoRouteAvailable(msg, numbers=numbers)
    reason = f"{start}: using the {fallback} route (policy_settings.{policy}.unknown)"
    return decided(fallback, policy, reason, routes, numbers)
