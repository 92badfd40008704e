"""`pinned`: per-model routes or nodes from config, falling through to another named policy."""

from __future__ import annotations

import pytest
from sollol_plugins.policies import memory_fit, size_threshold
from sollol_plugins.policies.pinned import Pinned
from test_policies_support import model, node, routes, rpc

from sollol.errors import ConfigError, NoRouteAvailable
from sollol.models import RouteRequest
from sollol.routes import Policy

STATE = routes(
    pool=[node("a", port=1, models=["llama3:latest", "qwen2:7b"]),
          node("b", port=2, models=["llama3:latest"]),
          node("dead", port=3, healthy=False)],
    sharding=[rpc("r1", 64)],
)


def build(settings: dict, **policy_settings: dict) -> Pinned:
    """A pinned policy whose fallbacks are the bundled factories with `policy_settings`."""
    factories = {"size-threshold": size_threshold, "memory-fit": memory_fit}

    def policies(name: str) -> Policy:
        return factories[name](policy_settings.get(name.replace("-", "_"), {}))

    return Pinned.from_settings(settings, policies)


def decide(policy: Pinned, name: str, info=None, state=STATE):
    return policy.decide(RouteRequest(model=name), info, state)


def test_exact_pin_to_a_route() -> None:
    policy = build({"models": {"llama3": "sharding"}})
    decision = decide(policy, "llama3:latest", model(params=8))
    assert (decision.route, decision.policy, decision.backend) == ("sharding", "pinned", None)
    assert "llama3:latest is pinned by 'llama3' to sharding" in decision.reason
    assert decision.numbers["pin"] == "llama3"


def test_pin_to_nodes_by_id_or_address_in_order_of_preference() -> None:
    policy = build({"models": {"llama3*": ["dead", "http://127.0.0.1:2/", "a"]}})
    decision = decide(policy, "llama3")
    assert (decision.route, decision.backend) == ("pool", "b")
    assert "dead skipped: node dead is down (connection refused)" in decision.reason
    assert decision.numbers["skipped"] == {"dead": "node dead is down (connection refused)"}


def test_exact_names_win_over_globs_and_globs_keep_their_order() -> None:
    policy = build({"models": {"*": "sharding", "qwen*": "a", "qwen2:7b": "pool"}})
    assert policy.match("qwen2:7b").pattern == "qwen2:7b"
    assert policy.match("qwen2:1b").pattern == "*"
    assert decide(policy, "qwen2:7b").route == "pool"


def test_unpinned_models_fall_through_to_the_named_policy() -> None:
    policy = build({"models": {"llama3": "a"}, "fallback": "size-threshold"},
                   size_threshold={"min_parameters": "7B"})
    decision = decide(policy, "qwen2:7b", model("qwen2:7b", params=7.6))
    assert decision.route == "sharding"
    assert decision.policy == "pinned"
    assert decision.numbers["fallback_policy"] == "size-threshold"
    assert decision.reason.startswith("no pin matches qwen2:7b, so size-threshold decides: ")
    assert "7.6B" in decision.reason


def test_fallback_503_keeps_its_numbers() -> None:
    policy = build({"fallback": "memory-fit"})
    state = routes(pool=[node("a", free=1, models=["m:latest"])], sharding=[rpc("r", 1)])
    with pytest.raises(NoRouteAvailable) as info:
        decide(policy, "m", model(size=4, kv=0), state)
    assert "no pin matches m; memory-fit decides: m needs 4.4 GiB" in str(info.value)
    assert info.value.numbers["need_bytes"] > 0


def test_strict_pin_with_every_target_down_is_a_503() -> None:
    policy = build({"models": {"llama3": ["dead", "nowhere"]}})
    with pytest.raises(NoRouteAvailable) as info:
        decide(policy, "llama3", model(params=1))
    message = str(info.value)
    assert "dead: node dead is down" in message
    assert "nowhere: no route or pool node has this name or address" in message
    assert "strict = false" in message


def test_non_strict_pin_falls_through_when_its_targets_are_down() -> None:
    policy = build({"models": {"llama3": "dead"}, "strict": False})
    decision = decide(policy, "llama3", model(params=1))
    assert decision.route == "pool" and decision.backend is None
    assert "none is up (dead: node dead is down" in decision.reason


def test_a_node_without_the_model_is_skipped() -> None:
    policy = build({"models": {"qwen2:7b": ["b", "a"]}})
    decision = decide(policy, "qwen2:7b")
    assert decision.backend == "a"
    assert "node b does not have qwen2:7b" in decision.reason


def test_pin_to_a_route_that_is_down() -> None:
    state = routes(pool=[node("a")], sharding=[rpc("r", 8, healthy=False)])
    with pytest.raises(NoRouteAvailable, match=r"sharding: the sharding route has no healthy"):
        decide(build({"models": {"m": "sharding"}}), "m", state=state)


@pytest.mark.parametrize(("settings", "key"), [
    ({"models": ["llama3"]}, "policy_settings.pinned.models"),
    ({"models": {"llama3": 5}}, "policy_settings.pinned.models.llama3"),
    ({"models": {"llama3": []}}, "policy_settings.pinned.models.llama3"),
    ({"strict": "yes"}, "policy_settings.pinned.strict"),
    ({"fallback": ""}, "policy_settings.pinned.fallback"),
    ({"pins": {}}, "policy_settings.pinned.pins"),
])
def test_bad_settings_name_the_key(settings: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build(settings)
    assert info.value.key == key
