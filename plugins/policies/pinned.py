"""`pinned`: per-model routes or nodes from config; other models fall through to another policy."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import attrs

from sollol.errors import ConfigError, NoRouteAvailable
from sollol.models import BackendState, ModelInfo, RouteDecision, RouteRequest, RouteState
from sollol.routes import POOL, SHARDING, Policy

from .common import route_down
from .name_match import glob_matches, is_glob, listed, same_model
from .policy_settings import SettingsReader, boolean, default, policy_name

DEFAULT_FALLBACK = "size-threshold"


@attrs.frozen
class Pin:
    """Models matching `pattern` (an exact name or a glob) go to the first usable target."""

    pattern: str
    targets: tuple[str, ...]

    def matches(self, model: str) -> bool:
        if is_glob(self.pattern):
            return glob_matches(self.pattern, model)
        return same_model(self.pattern, model)


def _targets(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(
            isinstance(t, str) and t.strip() for t in items):
        raise ValueError
    return tuple(t.strip() for t in items)


def read_pins(read: SettingsReader) -> tuple[Pin, ...]:
    """The `models` table: pattern -> a route or node, or a list of them in order of preference."""
    expected = ('a table of model name or glob -> "pool", "sharding", a node id or address, '
                'or a list of those')

    def convert(table: Any) -> tuple[Pin, ...]:
        if not isinstance(table, Mapping):
            raise ValueError(expected)
        pins = []
        for pattern, value in table.items():
            try:
                pins.append(Pin(pattern, _targets(value)))
            except ValueError:
                raise ConfigError(f"{read.key('models')}.{pattern}", value, expected) from None
        return tuple(pins)

    return read.get("models", (), convert, expected)


@attrs.frozen
class Pinned:
    """Pins first (exact names before globs, globs in the order written), then `fallback`."""

    name: ClassVar[str] = "pinned"

    pins: tuple[Pin, ...]
    fallback: Policy
    strict: bool = True

    @classmethod
    def from_settings(
        cls, settings: Mapping[str, Any], policies: Callable[[str], Policy]
    ) -> Pinned:
        """Build from `policy_settings.pinned` (models, fallback, strict)."""
        read = SettingsReader(cls.name, settings)
        pins = read_pins(read)
        fallback = read.get("fallback", DEFAULT_FALLBACK, policy_name)
        strict = read.get("strict", default(cls, "strict"), boolean)
        read.finish()
        return cls(pins, policies(fallback), strict)

    def match(self, model: str) -> Pin | None:
        """The pin for `model`: an exact name wins over any glob."""
        exact = [p for p in self.pins if not is_glob(p.pattern) and p.matches(model)]
        if exact:
            return exact[0]
        return next((p for p in self.pins if is_glob(p.pattern) and p.matches(model)), None)

    def decide(
        self, request: RouteRequest, model: ModelInfo | None, routes: Mapping[str, RouteState]
    ) -> RouteDecision:
        """Follow the model's pin if one matches and a target is up; else the fallback decides."""
        pin = self.match(request.model)
        if pin is None:
            return self._fall_through(request, model, routes, f"no pin matches {request.model}")
        numbers: dict[str, Any] = {"pin": pin.pattern, "targets": list(pin.targets)}
        pinned = f"{request.model} is pinned by {pin.pattern!r} to {', '.join(pin.targets)}"
        skipped: dict[str, str] = {}
        for target in pin.targets:
            decision, why = _try_target(target, request.model, routes)
            if decision is None:
                skipped[target] = why
                continue
            numbers["skipped"] = skipped
            note = "".join(f"; {t} skipped: {w}" for t, w in skipped.items())
            return attrs.evolve(decision, policy=self.name, numbers=numbers,
                                reason=f"{pinned}{note}: {why}")
        numbers["skipped"] = skipped
        down = "; ".join(f"{t}: {w}" for t, w in skipped.items())
        if self.strict:
            msg = (f"{pinned}, and none can take it ({down}); set policy_settings.pinned.strict "
                   "= false to fall through instead")
            raise NoRouteAvailable(msg, numbers=numbers)
        return self._fall_through(request, model, routes, f"{pinned}, but none is up ({down})")

    def _fall_through(
        self, request: RouteRequest, model: ModelInfo | None, routes: Mapping[str, RouteState],
        why: str,
    ) -> RouteDecision:
        try:
            inner = self.fallback.decide(request, model, routes)
        except NoRouteAvailable as exc:
            msg = f"{why}; {self.fallback.name} decides: {exc}"
            raise NoRouteAvailable(msg, exc.retry_after, exc.numbers) from None
        numbers = {**inner.numbers, "fallback_policy": inner.policy}
        reason = f"{why}, so {inner.policy} decides: {inner.reason}"
        return attrs.evolve(inner, policy=self.name, reason=reason, numbers=numbers)


def _try_target(
    target: str, model: str, routes: Mapping[str, RouteState]
) -> tuple[RouteDecision | None, str]:
    """(a decision, why) when `target` can take `model` now, else (None, why not)."""
    if target in routes or target in (POOL, SHARDING):
        problem = route_down(routes, target)
        if problem:
            return None, problem
        return RouteDecision(target, policy="", reason=""), f"using the {target} route"
    node = _find_node(routes.get(POOL), target)
    if node is None:
        return None, "no route or pool node has this name or address"
    label = f"node {node.backend.id}"
    if not node.healthy:
        return None, f"{label} is down" + (f" ({node.detail})" if node.detail else "")
    if not listed(model, node.models):
        return None, f"{label} does not have {model}"
    return RouteDecision(POOL, policy="", reason="", backend=node.backend.id), f"using {label}"


def _find_node(state: RouteState | None, target: str) -> BackendState | None:
    """The pool node whose id or address is `target` (a URL's scheme and slash are ignored)."""
    want = _bare(target)
    for node in state.backends if state else ():
        if node.backend.id == target or _bare(node.backend.address) == want:
            return node
    return None


def _bare(address: str) -> str:
    return address.split("://", 1)[-1].rstrip("/")
