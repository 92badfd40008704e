"""memory-fit with the real sharding plugin: real ggml-rpc-servers report their memory over the
RPC protocol, and a generated GGUF's metadata gives the need."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_policies_cluster import FixedRoute
from test_policies_support import node

from sollol.core.gguf_info import read_model_info
from sollol.core.plugin_manager import get_plugin_manager
from sollol.core.runtime import ClusterRuntime, load
from sollol.hookspecs import hookimpl
from sollol.models import RouteRequest

pytestmark = pytest.mark.llamacpp


class SmallPool:
    """A pool route whose one node has 1 MiB free: too little for any model."""

    def __init__(self, model: str) -> None:
        self.route = FixedRoute("pool", [node("tight", models=[model], free=1 / 1024)])

    @hookimpl
    def sollol_register_routes(self, register: Any) -> None:
        register(self.route)


async def test_memory_fit_uses_memory_reported_by_real_rpc_servers(
    rpc_servers: Any, llama_binaries: Any, tiny_model: Path, tmp_path: Path,
) -> None:
    addresses = [address for address, _proc in rpc_servers(2)]
    config, _pm = load(overrides={
        **{"model_sharding_enabled": True, "task_distribution_enabled": True},
        "rpc_backends": addresses, "rpc_discover_loopback": False,
        "rpc_state_dir": str(tmp_path / "sharding"), "plugins": ["llamacpp_rpc", "policies"],
        "llama_cpp_dir": str(llama_binaries.llama_server.parent),
        "routing_policy": "memory-fit",
    })
    pm = get_plugin_manager(["llamacpp_rpc", "policies"])
    pool = SmallPool(str(tiny_model))
    pm.register(pool, name="test-small-pool")
    cluster = ClusterRuntime(config=config, pm=pm)
    try:
        async with cluster:
            shards = cluster.route_states()["sharding"]
            decision = await cluster.decide(RouteRequest(model=str(tiny_model),
                                                         context_length=512))
    finally:
        pm.unregister(pool)
    reported = [b.memory_free for b in shards.healthy]
    assert len(reported) == 2 and all(free and free > 0 for free in reported)
    assert decision.route == "sharding"
    assert decision.numbers["sharding_free_bytes"] == sum(reported)
    info = read_model_info(tiny_model)
    assert decision.numbers["need_bytes"] == round(
        (info.file_size + info.kv_bytes_per_token * 512) * 1.1)
    assert "the 2 healthy rpc-servers have" in decision.reason
