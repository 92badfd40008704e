"""`size-threshold`: big models are sharded, small ones pooled, sizes only from metadata."""

from __future__ import annotations

import pytest
from sollol_plugins.policies.size_threshold import SizeThreshold
from test_policies_support import model, node, routes, rpc

from sollol.errors import ConfigError, NoRouteAvailable
from sollol.models import RouteRequest

BOTH = routes(pool=[node("a")], sharding=[rpc("r1", 8)])


def decide(policy: SizeThreshold, info, state=BOTH, name: str = "m:latest"):
    return policy.decide(RouteRequest(model=name), info, state)


@pytest.mark.parametrize(("billions", "route"), [
    (0.2, "pool"), (7, "pool"), (12.99, "pool"), (13, "sharding"), (70, "sharding"),
])
def test_default_threshold_is_13b_parameters(billions: float, route: str) -> None:
    decision = decide(SizeThreshold.from_settings({}), model(params=billions))
    assert decision.route == route
    assert decision.policy == "size-threshold"
    assert decision.numbers["threshold"] == 13 * 10**9
    assert decision.numbers["size"] == round(billions * 10**9)
    relation = "at or above" if route == "sharding" else "below"
    assert f"{relation} the 13.0B threshold" in decision.reason


def test_threshold_is_configurable_in_words() -> None:
    policy = SizeThreshold.from_settings({"min_parameters": "7B"})
    assert decide(policy, model(params=7)).route == "sharding"
    assert decide(policy, model(params=6.9)).route == "pool"


def test_file_size_threshold() -> None:
    policy = SizeThreshold.from_settings({"min_file_size": "4 GiB"})
    big = decide(policy, model(params=1, size=4.5))
    assert big.route == "sharding"
    assert "file size of 4.5 GiB" in big.reason and "4.0 GiB threshold" in big.reason
    assert decide(policy, model(params=100, size=3.9)).route == "pool"


def test_name_is_never_used_to_guess_the_size() -> None:
    policy = SizeThreshold.from_settings({})
    decision = decide(policy, model("llama3:70b"), name="llama3:70b")
    assert decision.route == "pool"  # the documented fallback, not "70b" read from the name
    assert decision.numbers["size_known"] is False
    assert "parameter count of llama3:70b is unknown" in decision.reason
    assert "policy_settings.size-threshold.unknown" in decision.reason


def test_unknown_size_fallbacks() -> None:
    to_sharding = SizeThreshold.from_settings({"unknown": "sharding"})
    assert decide(to_sharding, None).route == "sharding"
    refuse = SizeThreshold.from_settings({"unknown": "error"})
    with pytest.raises(NoRouteAvailable, match="unknown"):
        decide(refuse, None)


def test_chosen_route_down_is_a_503_with_the_numbers() -> None:
    down = [rpc("r1", 8, healthy=False), rpc("r2", 8, healthy=False)]
    state = routes(pool=[node("a")], sharding=down)
    with pytest.raises(NoRouteAvailable) as info:
        decide(SizeThreshold.from_settings({}), model(params=30), state)
    message = str(info.value)
    assert "30.0B" in message and "13.0B threshold" in message
    assert "0 of 2 healthy" in message
    assert info.value.numbers["size"] == 30 * 10**9
    assert info.value.status == 503


def test_missing_route_is_named() -> None:
    with pytest.raises(NoRouteAvailable, match="no plugin provides the 'sharding' route"):
        decide(SizeThreshold.from_settings({}), model(params=30), routes(sharding=None))


@pytest.mark.parametrize(("settings", "key"), [
    ({"min_parameters": "lots"}, "policy_settings.size-threshold.min_parameters"),
    ({"min_file_size": "8 GiB", "min_parameters": 13e9},
     "policy_settings.size-threshold.min_file_size"),
    ({"unknown": "guess"}, "policy_settings.size-threshold.unknown"),
    ({"min_param": 1}, "policy_settings.size-threshold.min_param"),
])
def test_bad_settings_name_the_key(settings: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        SizeThreshold.from_settings(settings)
    assert info.value.key == key
