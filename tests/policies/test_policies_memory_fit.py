"""`memory-fit`: a pool node that holds model + KV cache, else the rpc-servers, else a 503."""

from __future__ import annotations

import attrs
import pytest
from sollol_plugins.policies.memory_fit import MemoryFit
from test_policies_support import GiB, model, node, routes, rpc

from sollol.errors import ConfigError, NoRouteAvailable
from sollol.models import RouteRequest

KV = 128 * 1024  # bytes per token: 4096 tokens -> 0.5 GiB
# 4 GiB weights + 0.5 GiB KV (4096 tokens) + 10% reserve = 4.95 GiB
FOUR = model(size=4, kv=KV)
NEED = round(4.5 * GiB * 1.1)


def decide(state, info=FOUR, ctx: int | None = None, settings: dict | None = None):
    policy = MemoryFit.from_settings(settings or {})
    return policy.decide(RouteRequest(model="m", context_length=ctx), info, state)


def test_one_node_that_fits_lets_the_pool_balance() -> None:
    decision = decide(routes(pool=[node("a", free=8)], sharding=[rpc("r", 64)]))
    assert (decision.route, decision.backend, decision.policy) == ("pool", None, "memory-fit")
    assert decision.numbers["need_bytes"] == NEED
    assert decision.numbers["kv_bytes"] == GiB // 2
    assert decision.numbers["context"] == 4096
    assert "m needs 5.0 GiB (weights 4.0 GiB + KV 512.0 MiB for 4096 tokens + 10% reserve)" in (
        decision.reason)
    assert "node a has 8.0 GiB free" in decision.reason


def test_only_the_nodes_that_fit_are_used() -> None:
    state = routes(pool=[node("a", free=2), node("b", free=8), node("c", free=6)])
    decision = decide(state)
    assert (decision.route, decision.backend) == ("pool", "b")
    assert "2 of 3 nodes fit" in decision.reason
    assert decision.numbers["pool_nodes"]["a"] == {
        "free_bytes": 2 * GiB, "total_bytes": None, "vram_used_bytes": None, "loaded": False,
        "fits": False}


def test_a_node_with_the_model_loaded_fits_without_free_memory() -> None:
    state = routes(pool=[node("a", free=0.5, loaded=["m:latest"]), node("b", free=1)])
    decision = decide(state)
    assert (decision.route, decision.backend) == ("pool", "a")
    assert "loaded on node a" in decision.reason


def test_unhealthy_nodes_and_nodes_without_the_model_do_not_count() -> None:
    state = routes(
        pool=[node("down", free=64, healthy=False), node("other", free=64, models=["x:latest"]),
              node("small", free=1)],
        sharding=[rpc("r1", 3), rpc("r2", 3)],
    )
    decision = decide(state)
    assert decision.route == "sharding"
    assert "the most free memory on a pool node is 1.0 GiB (node small)" in decision.reason
    assert "the 2 healthy rpc-servers have 6.0 GiB free together" in decision.reason
    assert decision.numbers["sharding_free_bytes"] == 6 * GiB
    assert set(decision.numbers["pool_nodes"]) == {"small"}


def test_the_context_length_changes_the_answer() -> None:
    state = routes(pool=[node("a", free=8)], sharding=[rpc("r1", 6), rpc("r2", 6)])
    assert decide(state, ctx=4096).route == "pool"
    long = decide(state, ctx=32768)  # KV 4 GiB: (4 + 4) * 1.1 = 8.8 GiB
    assert long.route == "sharding"
    assert long.numbers["need_bytes"] == round(8 * GiB * 1.1)
    assert "for 32768 tokens" in long.reason


def test_nothing_fits_is_a_503_stating_the_numbers() -> None:
    state = routes(pool=[node("a", free=2)], sharding=[rpc("r1", 1), rpc("r2", 1.5)])
    with pytest.raises(NoRouteAvailable) as info:
        decide(state)
    message = str(info.value)
    assert info.value.status == 503
    assert "m needs 5.0 GiB" in message
    assert "1 healthy" not in message and "2 healthy rpc-servers have 2.5 GiB free" in message
    assert "most free memory on a pool node is 2.0 GiB (node a)" in message
    assert "nothing can hold it" in message
    assert info.value.numbers["need_bytes"] == NEED
    assert info.value.numbers["sharding_free_bytes"] == round(2.5 * GiB)


def test_sharding_down_or_missing_is_named_in_the_503() -> None:
    small_pool = [node("a", free=2)]
    with pytest.raises(NoRouteAvailable, match=r"no rpc-server is healthy \(0 of 1\)"):
        decide(routes(pool=small_pool, sharding=[rpc("r", 64, healthy=False)]))
    with pytest.raises(NoRouteAvailable, match="no plugin provides the 'sharding' route"):
        decide(routes(pool=small_pool, sharding=None))


def test_nodes_without_declared_memory_are_explained() -> None:
    with pytest.raises(NoRouteAvailable, match="declare no memory"):
        decide(routes(pool=[node("a")], sharding=[]))


def test_kv_upper_bound_from_layers_and_width_when_metadata_lacks_it() -> None:
    info = model(size=4, layers=32, width=4096)
    decision = decide(routes(pool=[node("a", free=64)]), info)
    assert decision.numbers["kv_bytes_per_token"] == 2 * 32 * 4096 * 2
    assert decision.numbers["kv_basis"] == "upper bound"
    assert "KV at most 2.0 GiB" in decision.reason


def test_unknown_file_size_uses_the_documented_fallback() -> None:
    state = routes(pool=[node("a", free=64)], sharding=[rpc("r", 64)])
    decision = decide(state, model(params=7))
    assert decision.route == "pool"
    assert "file size of m is unknown" in decision.reason
    assert decide(state, None, settings={"unknown": "sharding"}).route == "sharding"


def test_settings() -> None:
    decision = decide(routes(pool=[node("a", free=64)]),
                      settings={"default_context": 8192, "reserve": 0})
    assert decision.numbers["need_bytes"] == 5 * GiB
    for bad, key in (({"reserve": -1}, "reserve"), ({"default_context": 0}, "default_context"),
                     ({"unknown": "maybe"}, "unknown"), ({"context": 1}, "context")):
        with pytest.raises(ConfigError) as info:
            MemoryFit.from_settings(bad)
        assert info.value.key == f"policy_settings.memory-fit.{key}"


def test_the_rpc_servers_devices_are_named_where_all_are_known() -> None:
    vulkan = attrs.evolve(rpc("r1", 3), devices=("Vulkan0",))
    cpu = attrs.evolve(rpc("r2", 3), devices=("CPU",))
    decision = decide(routes(pool=[node("small", free=1)], sharding=[vulkan, cpu]))
    assert decision.route == "sharding"
    assert "the 2 healthy rpc-servers have 6.0 GiB free together on Vulkan0, CPU" in (
        decision.reason)
    # one remote rpc-server's names unknown: naming only the others would mislead
    decision = decide(routes(pool=[node("small", free=1)], sharding=[vulkan, rpc("r2", 3)]))
    assert decision.reason.endswith("have 6.0 GiB free together: the sharding route")
