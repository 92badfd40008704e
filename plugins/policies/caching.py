"""Remembering decisions, keyed by every input a bundled policy reads.

A cached decision is reused only while the model's size facts and every backend's health,
models and memory figures are exactly what they were. A changed figure is a new key, so a
decision made during a transient failure (a node down, a size not yet known) is never kept past
it. Errors (NoRouteAvailable) are never cached, nor decisions about a model of unknown size.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Mapping

import attrs

from sollol.models import ModelInfo, RouteDecision, RouteRequest, RouteState
from sollol.routes import Policy

DEFAULT_CAPACITY = 512


def fingerprint(
    request: RouteRequest, model: ModelInfo, routes: Mapping[str, RouteState]
) -> Hashable:
    """Everything the bundled policies read: the request's model and context, sizes, backends.

    In-flight counts are left out on purpose: no policy reads them (the route balances).
    """
    backends = tuple(
        (name, state.detail, tuple(
            (b.backend.id, b.backend.address, b.healthy, b.detail, b.models, b.loaded,
             b.memory_total, b.memory_free)
            for b in state.backends))
        for name, state in sorted(routes.items())
    )
    return (request.key, request.context_length, attrs.astuple(model), backends)


@attrs.define
class CachedPolicy:
    """Wraps a pure policy whose only inputs are those in `fingerprint`."""

    inner: Policy
    capacity: int = DEFAULT_CAPACITY
    hits: int = 0
    misses: int = 0
    _entries: OrderedDict[Hashable, RouteDecision] = attrs.field(factory=OrderedDict)

    @property
    def name(self) -> str:
        return self.inner.name

    def decide(
        self, request: RouteRequest, model: ModelInfo | None, routes: Mapping[str, RouteState]
    ) -> RouteDecision:
        """The inner policy's decision, reused while its inputs are unchanged."""
        if model is None:
            return self.inner.decide(request, model, routes)
        key = fingerprint(request, model, routes)
        cached = self._entries.get(key)
        if cached is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return cached
        self.misses += 1
        decision = self.inner.decide(request, model, routes)
        if decision.numbers.get("size_known", True):
            self._entries[key] = decision
            if len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return decision

    def clear(self) -> None:
        self._entries.clear()
