"""SOLLOL policy plugin `v2-policy`: decides per request which route (pool or sharding) serves it.

Select it with `sollol config set routing_policy v2-policy`; its settings come from
`[policy_settings.v2-policy]` in the config file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sollol.errors import NoRouteAvailable
from sollol.hookspecs import PolicyFactory, hookimpl
from sollol.models import ModelInfo, RouteDecision, RouteRequest, RouteState


class V2PolicyPolicy:
    """Prefer the route named by `prefer` (default "pool") when it can serve; else any other."""

    name = "v2-policy"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.prefer = str(settings.get("prefer", "pool"))

    def decide(self, request: RouteRequest, model: ModelInfo | None,
               routes: Mapping[str, RouteState]) -> RouteDecision:
        usable = [name for name, state in routes.items() if state.available]
        if not usable:
            raise NoRouteAvailable(f"{self.name}: no route has a healthy backend")
        route = self.prefer if self.prefer in usable else sorted(usable)[0]
        why = "preferred" if route == self.prefer else f"{self.prefer} is not available"
        return RouteDecision(route, policy=self.name, reason=f"{route}: {why}",
                             numbers={"usable_routes": len(usable)})


@hookimpl
def sollol_register_policies(register: Callable[[str, PolicyFactory], None]) -> None:
    register("v2-policy", V2PolicyPolicy)
