"""`latency`: a SOLLOL routing policy that learns how fast each route serves each model.

It watches finished requests (`sollol_request_routed`), keeps a moving average of seconds per
output token for every (route, model) pair, and sends each request to the route expected to be
fastest. A route it has not measured for a model yet is tried first, and every `explore_every`
decisions the runner-up is tried again, so a route that became faster is noticed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from sollol.errors import ConfigError, NoRouteAvailable
from sollol.hookspecs import hookimpl
from sollol.models import ModelInfo, RouteDecision, RouteEvent, RouteRequest, RouteState

NAME = "latency"


@attrs.define
class LatencyTracker:
    """Moving averages of seconds per output token, per (route, model), least recent dropped."""

    alpha: float = 0.3
    max_models: int = 1024
    failure_seconds: float = 30.0
    """What a failed request counts as: a route that fails looks slow, not free."""
    _averages: OrderedDict[tuple[str, str], tuple[float, int]] = attrs.field(
        factory=OrderedDict)

    def observe(self, event: RouteEvent) -> None:
        if not event.route or event.status == 499:  # the client left: says nothing of the route
            return
        tokens = max(event.tokens or 1, 1)
        sample = event.duration_s / tokens if event.ok else self.failure_seconds
        key = (event.route, event.model)
        old, count = self._averages.pop(key, (sample, 0))
        # The first request on a route often pays for a connection or a model load: the second
        # replaces it rather than being averaged with it.
        value = sample if count <= 1 else old + self.alpha * (sample - old)
        self._averages[key] = (value, count + 1)
        while len(self._averages) > self.max_models:  # model names come from clients
            self._averages.popitem(last=False)

    def estimate(self, route: str, model: str) -> float | None:
        known = self._averages.get((route, model))
        return None if known is None else known[0]


@attrs.define
class LatencyPolicy:
    """Pick the available route with the lowest measured seconds per token for the model."""

    tracker: LatencyTracker
    explore_every: int = 20
    name: str = NAME
    _decisions: int = 0

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> LatencyPolicy:
        unknown = sorted(set(settings) - {"alpha", "explore_every", "max_models"})
        if unknown:
            raise ConfigError(f"policy_settings.{NAME}", unknown,
                              "only alpha, explore_every and max_models")
        alpha = _number(settings, "alpha", 0.3, float, 0.0, 1.0)
        explore = _number(settings, "explore_every", 20, int, 0, 10**6)
        models = _number(settings, "max_models", 1024, int, 1, 10**7)
        return cls(LatencyTracker(alpha=alpha, max_models=models), explore_every=explore)

    def decide(self, request: RouteRequest, model: ModelInfo | None,
               routes: Mapping[str, RouteState]) -> RouteDecision:
        usable = sorted(name for name, state in routes.items() if state.available)
        if not usable:
            raise NoRouteAvailable(f"{NAME}: no route has a healthy backend",
                                   numbers={"routes": sorted(routes)})
        self._decisions += 1
        known = {r: self.tracker.estimate(r, request.model) for r in usable}
        numbers: dict[str, Any] = {"seconds_per_token": known}
        untried = [r for r, seconds in known.items() if seconds is None]
        if untried:
            return RouteDecision(untried[0], NAME, f"no latency measured yet for "
                                 f"{request.model} on {untried[0]}: trying it", numbers=numbers)
        ranked = sorted(usable, key=lambda r: known[r])
        if len(ranked) > 1 and self.explore_every and self._decisions % self.explore_every == 0:
            return RouteDecision(ranked[1], NAME, f"re-measuring {ranked[1]} (every "
                                 f"{self.explore_every} decisions)", numbers=numbers)
        best = ranked[0]
        return RouteDecision(best, NAME, f"{best} is fastest for {request.model}: "
                             f"{known[best]:.4f} s/token", numbers=numbers)


def _number(settings: Mapping[str, Any], key: str, default: Any, kind: type, low: float,
            high: float) -> Any:
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ConfigError(f"policy_settings.{NAME}.{key}", value,
                          f"{'an integer' if kind is int else 'a number'} from {low} to {high}")
    return kind(value)


class LatencyPlugin:
    """The plugin object: registers the policy and feeds each cluster's policy its own events."""

    @hookimpl
    def sollol_register_policies(self, register: Callable[[str, Any], None]) -> None:
        register(NAME, LatencyPolicy.from_settings)

    @hookimpl
    def sollol_request_routed(self, event: RouteEvent, cluster: Any) -> None:
        policy = getattr(cluster, "policy", None)
        if isinstance(policy, LatencyPolicy):
            policy.tracker.observe(event)


plugin = LatencyPlugin()
