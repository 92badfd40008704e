"""Policies inside a real ClusterRuntime: generated GGUF models read through their metadata, routes
with chosen memory figures, a third-party policy chosen by config, and duplicate names."""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from test_policies_support import node, rpc

from sollol.config import load_config
from sollol.core.gguf_info import read_model_info
from sollol.core.plugin_manager import SollolPluginManager, collect_named, get_plugin_manager
from sollol.core.runtime import ClusterRuntime
from sollol.errors import ConfigError, DuplicateNameError, NoRouteAvailable
from sollol.hookspecs import hookimpl
from sollol.models import BackendState, ModelInfo, RouteDecision, RouteRequest, RouteState
from sollol.routes import Lease
from sollol.testing.tiny_models import make_tiny_model

MiB = 2**20


@attrs.define
class FixedRoute:
    """A route whose backends a test sets directly; it only reports state (never serves)."""

    name: str
    backends: list[BackendState] = attrs.field(factory=list)
    infos: dict[str, ModelInfo] = attrs.field(factory=dict)
    started: bool = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False

    def state(self) -> RouteState:
        return RouteState(self.name, tuple(self.backends))

    async def list_models(self) -> list[dict[str, Any]]:
        return []

    async def running(self) -> list[dict[str, Any]]:
        return []

    async def model_info(self, model: str) -> ModelInfo | None:
        return self.infos.get(model)

    async def acquire(self, request: RouteRequest, *, backend: str | None = None,
                      exclude: Collection[str] = ()) -> Lease:
        raise NoRouteAvailable(f"the test route {self.name!r} serves no requests")

    def snapshot(self) -> dict[str, Any]:
        return {"backends": [b.backend.id for b in self.backends]}


@attrs.define
class RoutesPlugin:
    """Registers the two fixed routes, as the pool and sharding plugins would."""

    pool: FixedRoute = attrs.field(factory=lambda: FixedRoute("pool"))
    sharding: FixedRoute = attrs.field(factory=lambda: FixedRoute("sharding"))

    @hookimpl
    def sollol_register_routes(self, register: Callable[[Any], None],
                               cluster: ClusterRuntime) -> None:
        register(self.pool)
        register(self.sharding)


@attrs.frozen
class ShardWhenAnyShardIsUp:
    """A third-party policy: sharding whenever an rpc-server is healthy, else the pool."""

    name = "shard-first"
    note: str = ""

    def decide(self, request: RouteRequest, model: ModelInfo | None,
               routes: dict[str, RouteState]) -> RouteDecision:
        up = len(routes["sharding"].healthy)
        route = "sharding" if up else "pool"
        return RouteDecision(route, self.name, f"{up} rpc-servers up{self.note}: {route}",
                             numbers={"rpc_up": up})


class ShardFirstPlugin:
    @hookimpl
    def sollol_register_policies(self, register: Callable[[str, Any], None]) -> None:
        register("shard-first", lambda settings: ShardWhenAnyShardIsUp(settings.get("note", "")))


class DuplicatePlugin:
    @hookimpl
    def sollol_register_policies(self, register: Callable[[str, Any], None]) -> None:
        register("memory-fit", lambda settings: ShardWhenAnyShardIsUp())


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three real GGUF files: 0.6M, 1.1M and 10M parameters (1.1, 2.1 and 20 MiB)."""
    folder = tmp_path_factory.mktemp("policy-models")
    return {
        "tiny": make_tiny_model(folder / "tiny.gguf"),
        "mid": make_tiny_model(folder / "mid.gguf", layers=4, dim=128, seed=1),
        "small": make_tiny_model(folder / "small.gguf", layers=12, dim=256, seed=2),
    }


@pytest.fixture
def routes_plugin() -> RoutesPlugin:
    return RoutesPlugin()


@pytest.fixture
def plugins(routes_plugin: RoutesPlugin) -> Iterator[SollolPluginManager]:
    """Our policies through their entry point, the fixed routes, and the shard-first plugin."""
    pm = get_plugin_manager(allow=["policies"])
    extra = [(routes_plugin, "test-routes"), (ShardFirstPlugin(), "test-shard-first")]
    for plugin, name in extra:
        pm.register(plugin, name=name)
    yield pm
    for plugin, _name in extra:
        pm.unregister(plugin)


def make_cluster(pm: SollolPluginManager, config_file: Path, **values: Any) -> ClusterRuntime:
    settings = collect_named(pm, "sollol_register_settings", "config key")
    config = load_config([s for s, _ in settings.values()], path=config_file, env={},
                         overrides={"model_sharding_enabled": True,
                                    "task_distribution_enabled": True,
                                    # the GGUF files are named by path: allow the temp folders
                                    "gguf_dirs": [os.environ["SOLLOL_GGUF_DIRS"]], **values})
    return ClusterRuntime(config=config, pm=pm)


async def decide(cluster: ClusterRuntime, path: Path, ctx: int | None = None) -> RouteDecision:
    return await cluster.decide(RouteRequest(model=str(path), context_length=ctx))


async def test_size_threshold_reads_sizes_from_generated_gguf_files(
    plugins: SollolPluginManager, routes_plugin: RoutesPlugin, models: dict[str, Path],
    isolated_config: Path,
) -> None:
    routes_plugin.pool.backends = [node("a")]
    routes_plugin.sharding.backends = [rpc("r", 64)]
    cluster = make_cluster(plugins, isolated_config, routing_policy="size-threshold",
                           policy_settings={"size-threshold": {"min_parameters": "1M"}})
    async with cluster:
        tiny, mid, small = [await decide(cluster, models[n]) for n in ("tiny", "mid", "small")]
    assert (tiny.route, mid.route, small.route) == ("pool", "sharding", "sharding")
    assert tiny.numbers["size"] == read_model_info(models["tiny"]).parameter_count == 579_648
    assert tiny.numbers["source"] == "gguf"
    assert "parameter count of 579K (from gguf), below the 1.0M threshold" in tiny.reason

    cluster = make_cluster(plugins, isolated_config, routing_policy="size-threshold",
                           policy_settings={"size-threshold": {"min_file_size": "4 MiB"}})
    async with cluster:
        routes = [(await decide(cluster, models[n])).route for n in ("tiny", "mid", "small")]
    assert routes == ["pool", "pool", "sharding"]


def need(path: Path, ctx: int) -> int:
    info = read_model_info(path)
    return round((info.file_size + info.kv_bytes_per_token * ctx) * 1.1)


@pytest.mark.parametrize(("pool_free", "rpc_free", "tiny", "small"), [
    (64, (8, 8), "pool", "pool"),  # a big node holds both
    (8, (16, 16), "pool", "sharding"),  # the 10M model needs 28 MiB: only the shards together
    (8, (8, 8), "pool", None),  # nothing holds the 10M model: 503
    (1, (1, 1), None, None),
])
async def test_memory_fit_against_pools_with_different_memory(
    plugins: SollolPluginManager, routes_plugin: RoutesPlugin, models: dict[str, Path],
    isolated_config: Path, pool_free: int, rpc_free: tuple[int, int], tiny: str | None,
    small: str | None,
) -> None:
    names = [str(models["tiny"]), str(models["small"])]
    routes_plugin.pool.backends = [node("a", models=names, free=pool_free / 1024)]
    routes_plugin.sharding.backends = [rpc("r1", rpc_free[0] / 1024, port=1),
                                       rpc("r2", rpc_free[1] / 1024, port=2)]
    cluster = make_cluster(plugins, isolated_config, routing_policy="memory-fit")
    async with cluster:
        for key, expected in (("tiny", tiny), ("small", small)):
            if expected is None:
                with pytest.raises(NoRouteAvailable) as info:
                    await decide(cluster, models[key], ctx=512)
                assert info.value.numbers["need_bytes"] == need(models[key], 512)
                assert "nothing can hold it" in str(info.value)
                assert f"{sum(rpc_free)}.0 MiB free together" in str(info.value)
                continue
            decision = await decide(cluster, models[key], ctx=512)
            assert decision.route == expected
            assert decision.numbers["need_bytes"] == need(models[key], 512)
            assert decision.numbers["weights_bytes"] == models[key].stat().st_size
            assert decision.numbers["kv_basis"] == "metadata"


async def test_a_plugin_policy_chosen_by_name_is_followed(
    plugins: SollolPluginManager, routes_plugin: RoutesPlugin, models: dict[str, Path],
    isolated_config: Path,
) -> None:
    routes_plugin.pool.backends = [node("a", free=64)]
    routes_plugin.sharding.backends = [rpc("r", 64)]
    cluster = make_cluster(plugins, isolated_config, routing_policy="shard-first",
                           policy_settings={"shard-first": {"note": " (test)"}})
    async with cluster:
        first = await decide(cluster, models["tiny"])
        routes_plugin.sharding.backends = [rpc("r", 64, healthy=False)]
        second = await decide(cluster, models["tiny"])
    assert cluster.policy is not None and cluster.policy.name == "shard-first"
    assert (first.route, first.policy, first.reason) == ("sharding", "shard-first",
                                                         "1 rpc-servers up (test): sharding")
    assert (second.route, second.numbers) == ("pool", {"rpc_up": 0})


async def test_pinned_falls_through_to_a_plugin_policy(
    plugins: SollolPluginManager, routes_plugin: RoutesPlugin, models: dict[str, Path],
    isolated_config: Path,
) -> None:
    tiny = str(models["tiny"])
    routes_plugin.pool.backends = [node("a", models=[tiny])]
    routes_plugin.sharding.backends = [rpc("r", 64)]
    pins = {"pinned": {"models": {"*/tiny.gguf": "a"}, "fallback": "shard-first"}}
    cluster = make_cluster(plugins, isolated_config, routing_policy="pinned",
                           policy_settings=pins)
    async with cluster:
        pinned = await decide(cluster, models["tiny"])
        other = await decide(cluster, models["small"])
    assert (pinned.route, pinned.backend) == ("pool", "a")
    assert (other.route, other.numbers["fallback_policy"]) == ("sharding", "shard-first")


@pytest.mark.parametrize(("settings", "message"), [
    ({"pinned": {"fallback": "nope"}}, "got 'nope', expected the name of a registered policy"),
    ({"pinned": {"fallback": "pinned"}}, "pinned -> pinned"),
    ({"pinned": {"strict": 3}}, "'policy_settings.pinned.strict'"),
])
async def test_bad_fallbacks_are_config_errors_at_start(
    plugins: SollolPluginManager, isolated_config: Path, settings: dict, message: str,
) -> None:
    cluster = make_cluster(plugins, isolated_config, routing_policy="pinned",
                           policy_settings=settings)
    with pytest.raises(ConfigError, match=message):
        await cluster.start()
    assert not cluster.started


async def test_a_duplicate_policy_name_is_a_startup_error_naming_both(
    plugins: SollolPluginManager, isolated_config: Path,
) -> None:
    duplicate = DuplicatePlugin()
    plugins.register(duplicate, name="test-duplicate")
    try:
        cluster = make_cluster(plugins, isolated_config, routing_policy="size-threshold")
        with pytest.raises(DuplicateNameError) as info:
            await cluster.start()
    finally:
        plugins.unregister(duplicate)
    assert {info.value.first, info.value.second} == {"policies", "test-duplicate"}
    assert "'policies'" in str(info.value) and "'test-duplicate'" in str(info.value)
    assert "routing policy 'memory-fit'" in str(info.value)
    assert not cluster.started


async def test_decisions_are_reused_only_while_their_inputs_hold(
    plugins: SollolPluginManager, routes_plugin: RoutesPlugin, models: dict[str, Path],
    isolated_config: Path,
) -> None:
    small = str(models["small"])
    routes_plugin.pool.backends = [node("a", models=[small], free=64 / 1024)]
    routes_plugin.sharding.backends = [rpc("r", 64 / 1024)]
    cluster = make_cluster(plugins, isolated_config, routing_policy="memory-fit")
    async with cluster:
        policy = cluster.policy
        first = await decide(cluster, models["small"], 512)
        again = await decide(cluster, models["small"], 512)
        assert first == again and (policy.hits, policy.misses) == (1, 1)

        routes_plugin.pool.backends = [node("a", models=[small], free=64 / 1024, healthy=False)]
        during = await decide(cluster, models["small"], 512)  # a node outage: sharding for now
        routes_plugin.pool.backends = [node("a", models=[small], free=64 / 1024)]
        after = await decide(cluster, models["small"], 512)  # back: the pool again, not stuck
        routes_plugin.pool.backends = [node("a", models=[small], free=8 / 1024)]
        shrunk = await decide(cluster, models["small"], 512)  # another model loaded there
    assert (first.route, during.route, after.route, shrunk.route) == (
        "pool", "sharding", "pool", "sharding")
    assert policy.misses == 3  # the outage and the shrink were decided afresh; `after` was cached


async def test_an_unknown_size_is_never_cached(
    plugins: SollolPluginManager, routes_plugin: RoutesPlugin, isolated_config: Path,
) -> None:
    routes_plugin.pool.backends = [node("a", models=["big:latest"])]
    routes_plugin.sharding.backends = [rpc("r", 64)]
    cluster = make_cluster(plugins, isolated_config, routing_policy="size-threshold")
    async with cluster:
        unknown = await cluster.decide(RouteRequest(model="big"))
        routes_plugin.pool.infos["big"] = ModelInfo("big", parameter_count=70 * 10**9,
                                                    source="/api/show")
        known = await cluster.decide(RouteRequest(model="big"))
    assert unknown.route == "pool" and unknown.numbers["size_known"] is False
    assert known.route == "sharding"
    assert "70.0B (from /api/show)" in known.reason
