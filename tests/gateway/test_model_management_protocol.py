"""The gateway manages models through `sollol.routes.ModelManagement`, a declared interface: any
pool route that implements it serves `/api/pull` ... `/api/copy`; one that does not gets a 503."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Collection, Mapping
from pathlib import Path
from typing import Any

import attrs
import httpx
from sollol_plugins.llamacpp_rpc.sharding_route import ShardingRoute
from sollol_plugins.ollama_pool.pool_route import PoolRoute

from sollol.config import load_config
from sollol.core.plugin_manager import get_plugin_manager
from sollol.core.runtime import ClusterRuntime
from sollol.routes import Membership, ModelManagement, RouteProvider
from sollol.testing.static_route import StaticRoute


@attrs.define
class ManagedRoute(StaticRoute):
    """A static route that also manages models, recording each call."""

    calls: list[tuple[Any, ...]] = attrs.field(factory=list)

    async def _progress(self, what: str, model: str,
                        nodes: Collection[str] | None) -> AsyncIterator[dict[str, Any]]:
        self.calls.append((what, model, nodes))
        yield {"status": f"{what}ing", "node": "n1"}
        yield {"status": "success", "nodes": {"n1": "success"}}

    def pull(self, model: str, nodes: Collection[str] | None = None,
             insecure: bool = False) -> AsyncIterator[dict[str, Any]]:
        return self._progress("pull", model, nodes)

    def push(self, model: str, nodes: Collection[str] | None = None,
             insecure: bool = False) -> AsyncIterator[dict[str, Any]]:
        return self._progress("push", model, nodes)

    def create(self, body: Mapping[str, Any], nodes: Collection[str] | None = None,
               ) -> AsyncIterator[dict[str, Any]]:
        return self._progress("create", body["model"], nodes)

    async def upload_blobs(self, blobs: Mapping[str, Path],
                           nodes: Collection[str] | None = None) -> dict[str, list[str]]:
        self.calls.append(("upload", sorted(blobs), nodes))
        return {}

    async def delete(self, model: str, nodes: Collection[str] | None = None,
                     ) -> dict[str, Any]:
        self.calls.append(("delete", model, nodes))
        return {"status": "success", "nodes": {"n1": {"status": "success"}}}

    async def copy(self, source: str, destination: str,
                   nodes: Collection[str] | None = None) -> dict[str, Any]:
        self.calls.append(("copy", f"{source}->{destination}", nodes))
        return {"status": "error", "error": "failed on n1: no such model",
                "nodes": {"n1": {"status": 404}}, "http_status": 404}


def test_the_bundled_pool_route_implements_the_routes_protocols() -> None:
    assert issubclass(PoolRoute, ModelManagement)
    assert not issubclass(ShardingRoute, ModelManagement)
    # a config loaded without the pool's keys: the pool reads their Settings' defaults
    runtime = ClusterRuntime(config=load_config(), pm=get_plugin_manager(load_entry_points=False))
    pool = PoolRoute(runtime)
    assert isinstance(pool, RouteProvider) and isinstance(pool, Membership)
    assert isinstance(pool, ModelManagement)
    assert pool.settings.concurrency == 4 and pool.settings.health_interval == 5.0


def test_any_pool_route_implementing_it_serves_model_management(gateway) -> None:
    route = ManagedRoute("pool", [])
    thread = gateway(routes=[route])
    with httpx.Client(base_url=thread.url, trust_env=False, timeout=30) as client:
        pulled = client.post("/api/pull?node=n1", json={"model": "m"})
        deleted = client.request("DELETE", "/api/delete", json={"model": "m", "nodes": ["n1"]})
        copied = client.post("/api/copy", json={"source": "a", "destination": "b"})
        summary = client.post("/api/push", json={"model": "m", "stream": False})
    lines = [json.loads(line) for line in pulled.text.splitlines()]
    assert pulled.status_code == 200 and lines[-1] == {"status": "success",
                                                       "nodes": {"n1": "success"}}
    assert deleted.status_code == 200 and deleted.json()["status"] == "success"
    assert copied.status_code == 404 and "http_status" not in copied.json()
    assert summary.json() == {"status": "success", "nodes": {"n1": "success"}}
    assert route.calls == [("pull", "m", ["n1"]), ("delete", "m", ["n1"]),
                           ("copy", "a->b", None), ("push", "m", None)]


def test_a_pool_route_without_it_cannot_manage_models(gateway) -> None:
    thread = gateway(routes=[StaticRoute("pool", [])])
    reply = httpx.post(thread.url + "/api/pull", json={"model": "m"}, trust_env=False,
                       timeout=30)
    assert reply.status_code == 503
    assert "pool route that supports 'pull'" in reply.text
