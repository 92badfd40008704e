"""Cached decisions: reused only for identical inputs; errors and unknown sizes never kept."""

from __future__ import annotations

import attrs
import pytest
from sollol_plugins.policies.caching import CachedPolicy
from sollol_plugins.policies.memory_fit import MemoryFit
from sollol_plugins.policies.size_threshold import SizeThreshold
from test_policies_support import model, node, routes, rpc

from sollol.errors import NoRouteAvailable
from sollol.models import RouteRequest

REQUEST = RouteRequest(model="m")


def test_same_inputs_hit_and_any_changed_figure_misses() -> None:
    policy = CachedPolicy(MemoryFit())
    info = model(size=4, kv=0)
    state = routes(pool=[node("a", free=8)], sharding=[rpc("r", 8)])
    first = policy.decide(REQUEST, info, state)
    assert policy.decide(REQUEST, info, state) is first
    assert (policy.hits, policy.misses) == (1, 1)

    changes = [
        (REQUEST, info, routes(pool=[node("a", free=7.9)], sharding=[rpc("r", 8)])),
        (REQUEST, info, routes(pool=[node("a", free=8, healthy=False)], sharding=[rpc("r", 8)])),
        (REQUEST, info, routes(pool=[node("a", free=8, loaded=["m"])], sharding=[rpc("r", 8)])),
        (REQUEST, attrs.evolve(info, file_size=info.file_size + 1), state),
        (attrs.evolve(REQUEST, context_length=8192), info, state),
    ]
    for request, changed_info, changed_state in changes:
        policy.decide(request, changed_info, changed_state)
    assert (policy.hits, policy.misses) == (1, 6)


def test_in_flight_counts_do_not_change_the_key() -> None:
    policy = CachedPolicy(MemoryFit())
    busy = attrs.evolve(node("a", free=8), in_flight=5)
    policy.decide(REQUEST, model(size=4), routes(pool=[node("a", free=8)]))
    policy.decide(REQUEST, model(size=4), routes(pool=[busy]))
    assert policy.hits == 1


def test_errors_are_never_cached() -> None:
    policy = CachedPolicy(MemoryFit())
    state = routes(pool=[node("a", free=1)], sharding=[rpc("r", 1)])
    for _ in range(2):
        with pytest.raises(NoRouteAvailable):
            policy.decide(REQUEST, model(size=4), state)
    assert (policy.hits, policy.misses) == (0, 2)


def test_unknown_sizes_are_never_cached() -> None:
    policy = CachedPolicy(SizeThreshold())
    state = routes(pool=[node("a")], sharding=[rpc("r", 8)])
    for info in (None, model(), model()):
        assert policy.decide(REQUEST, info, state).route == "pool"
    assert policy.hits == 0


def test_the_cache_is_bounded() -> None:
    policy = CachedPolicy(SizeThreshold(), capacity=2)
    state = routes(pool=[node("a")], sharding=[rpc("r", 8)])
    for billions in (1, 2, 3, 1):
        policy.decide(REQUEST, model(params=billions), state)
    assert (policy.hits, policy.misses) == (0, 4)  # 1B was evicted by 3B
    assert policy.name == "size-threshold"
