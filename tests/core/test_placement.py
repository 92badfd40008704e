"""Where each model is: a policy chooses only among routes that can serve the request, an unknown
model gets "did you mean" from every route, and the local cluster serves embeddings. Runs the
real local cluster (llama-server pool nodes, one with `--embeddings`, and an rpc-server)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from sollol.core.runtime import ClusterRuntime
from sollol.errors import ModelNotFound, NotSupported
from sollol.local import LocalCluster
from sollol.models import RouteRequest
from sollol.testing.ollama_store import OllamaStoreBuilder

SMALL, LARGE = "sollol-demo-small", "sollol-demo-large"
EMBED = frozenset({"embedding"})


def overrides(local: LocalCluster, store: Path | None = None, **more) -> dict:
    values = {**local.overrides(), "health_interval": 0.5, **more}
    if store is not None:
        values["ollama_models_dir"] = str(store)
    return values


async def test_a_pool_only_model_goes_to_the_pool_whatever_its_size(
    local_cluster: LocalCluster, tmp_path: Path,
) -> None:
    """The pool nodes serve the small model, the gateway's store lacks it; with a threshold
    that would shard it by size, it still goes to the pool (no more 404 from sharding)."""
    assert local_cluster.models is not None
    store = OllamaStoreBuilder(tmp_path / "store")
    store.add_model(LARGE, local_cluster.models.large.path)
    settings = {"size-threshold": {"min_parameters": 1}}  # everything is "big"
    async with ClusterRuntime.from_config(overrides=overrides(
            local_cluster, store.root, policy_settings=settings)) as cluster:
        decision = await cluster.decide(RouteRequest(model=SMALL))
        assert decision.route == "pool"
        assert "only the pool route" in decision.reason and "no GGUF" in decision.reason
        sharded = await cluster.decide(RouteRequest(model=LARGE))
        assert sharded.route == "sharding"
        with pytest.raises(ModelNotFound) as missing:
            await cluster.decide(RouteRequest(model="sollol-demo-smal"))
        assert f"did you mean '{SMALL}" in str(missing.value)
        assert missing.value.status == 404


async def test_embeddings_go_where_they_can_be_served(local_cluster: LocalCluster) -> None:
    async with ClusterRuntime.from_config(overrides=overrides(local_cluster)) as cluster:
        small = await cluster.decide(RouteRequest(model=SMALL, endpoint="embed", needs=EMBED))
        assert small.route == "pool"
        places = await cluster.placements(RouteRequest(model=LARGE, endpoint="embed",
                                                       needs=EMBED))
        assert places["sharding"].missing == EMBED
        assert places["pool"].holds is False
        with pytest.raises(NotSupported, match="--embeddings") as refused:
            await cluster.decide(RouteRequest(model=LARGE, endpoint="embed", needs=EMBED))
        assert refused.value.status == 501


def test_the_local_cluster_serves_embeddings_through_the_gateway(
    local_cluster: LocalCluster,
) -> None:
    """The first local pool node embeds, the others do not: every embed lands on it, chat
    still uses the pool, and no node is ejected for lacking embeddings."""
    from sollol.gateway import GatewayThread

    cluster = ClusterRuntime.from_config(overrides=overrides(local_cluster))
    gateway = GatewayThread(cluster).start()
    try:
        for _ in range(8):
            reply = httpx.post(gateway.url + "/api/embed", json={"model": SMALL, "input": "hi"},
                               timeout=60)
            assert reply.status_code == 200, reply.text
            assert len(reply.json()["embeddings"][0]) == 128
            assert reply.headers["x-sollol-backend"] == local_cluster.pool[0].address
        big = httpx.post(gateway.url + "/v1/embeddings", json={"model": LARGE, "input": "x"},
                         timeout=60)
        assert big.status_code == 501 and "--embeddings" in big.text
        chat = httpx.post(gateway.url + "/api/chat", timeout=120, json={
            "model": SMALL, "stream": False, "options": {"num_predict": 2},
            "messages": [{"role": "user", "content": "hi"}]})
        assert chat.status_code == 200, chat.text
        nodes = httpx.get(gateway.url + "/sollol/nodes").json()["nodes"]
        assert {n["health"] for n in nodes} == {"healthy"}
        route = httpx.get(gateway.url + "/sollol/route",
                          params={"model": SMALL, "endpoint": "embed"}).json()
        assert route["route"] == "pool"
        assert route["placement"]["sharding"]["missing"] == ["embedding"]
    finally:
        gateway.stop()
