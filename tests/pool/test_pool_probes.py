"""Health probes: one keep-alive connection per node reused probe after probe, what a node can
do asked only when its models change (or it comes back), and no probe waiting for another."""

from __future__ import annotations

import asyncio
import collections
import json
import time

from aiohttp import web
from sollol_plugins.ollama_pool import node_probe
from sollol_plugins.ollama_pool.node_probe import Prober

from sollol.core.router import POOL
from sollol.core.runtime import ClusterRuntime
from sollol.models import Backend
from sollol.testing.gauges import connections_to


async def wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout  # only stops a stuck test; nothing is timed
    while not condition():
        assert time.monotonic() < deadline, "condition not met"
        await asyncio.sleep(0.02)


class LlamaServerLike:
    """llama-server's probe endpoints, counting the requests each path gets."""

    def __init__(self) -> None:
        self.seen: collections.Counter[str] = collections.Counter()
        self.models = ["tiny"]
        self.health = 200
        self.props_delay = 0.0
        self.props_asked = 0
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/slots", self._slots)
        app.router.add_get("/props", self._props)
        app.router.add_post("/v1/embeddings", self._embeddings)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def _json(self, request: web.Request, body: object, status: int = 200) -> web.Response:
        self.seen[request.path] += 1
        return web.Response(status=status, text=json.dumps(body),
                            content_type="application/json")

    async def _health(self, request: web.Request) -> web.Response:
        return self._json(request, {"status": "ok"}, self.health)

    async def _models(self, request: web.Request) -> web.Response:
        return self._json(request, {"data": [{"id": m} for m in self.models]})

    async def _slots(self, request: web.Request) -> web.Response:
        return self._json(request, [{"id": 0, "is_processing": False}])

    async def _props(self, request: web.Request) -> web.Response:
        self.props_asked += 1
        await asyncio.sleep(self.props_delay)
        return self._json(request, {"model_path": "/nowhere/tiny.gguf", "chat_template": "x"})

    async def _embeddings(self, request: web.Request) -> web.Response:
        return self._json(request, {"error": {"message": "no --embeddings"}}, 501)


async def test_capabilities_are_asked_when_the_models_change_or_the_node_comes_back():
    node = LlamaServerLike()
    await node.start()
    prober = Prober()
    backend = Backend(f"127.0.0.1:{node.port}", "openai", f"127.0.0.1:{node.port}")
    try:
        reports = [await prober.check(backend, 5.0) for _ in range(5)]
        assert all(r.healthy and r.extra["capabilities"] == {"": {"completion", "tools", "chat"}}
                   for r in reports)
        assert reports[-1].extra["server"] == "llama-server"
        assert node.seen["/health"] == 5 and node.seen["/props"] == 1
        assert node.seen["/v1/embeddings"] == 1
        node.models = ["tiny", "other"]  # its model list changed: ask again
        await prober.check(backend, 5.0)
        await prober.check(backend, 5.0)
        assert node.seen["/props"] == 2
        node.health = 500  # down, then back: it may have restarted with other options
        assert not (await prober.check(backend, 5.0)).healthy
        node.health = 200
        assert (await prober.check(backend, 5.0)).healthy
        assert node.seen["/props"] == 3
        assert prober.sizes() == {"learned": 1, "dialect": 0, "failed": 0}
        prober.retain(set())  # the node left the pool
        assert prober.sizes() == {"learned": 0, "dialect": 0, "failed": 0}
    finally:
        await prober.close()
        await node.stop()


async def test_a_slow_capabilities_answer_is_not_a_sick_node():
    node = LlamaServerLike()
    node.props_delay = 5.0
    await node.start()
    prober = Prober()
    backend = Backend(f"127.0.0.1:{node.port}", "openai", f"127.0.0.1:{node.port}")
    try:
        report = await prober.check(backend, 0.5)
        assert report.healthy and "capabilities" not in report.extra
        node.props_delay = 0.0  # the next probe asks again
        report = await prober.check(backend, 0.5)
        assert report.healthy and report.extra["capabilities"] == {"": {"completion", "tools",
                                                                         "chat"}}
    finally:
        await prober.close()
        await node.stop()


async def test_a_lesson_that_keeps_failing_is_not_asked_on_every_probe(monkeypatch):
    """A busy node answering `/props` past the probe's timeout (issue 26): asked at the next
    probe once more, then only after `RETRY_FIRST` seconds, doubling."""
    monkeypatch.setattr(node_probe, "RETRY_FIRST", 600.0)  # no wall clock in the test
    node = LlamaServerLike()
    node.props_delay = 5.0
    await node.start()
    prober = Prober()
    backend = Backend(f"127.0.0.1:{node.port}", "openai", f"127.0.0.1:{node.port}")
    try:
        for _ in range(10):
            report = await prober.check(backend, 1.0)
            assert report.healthy and "capabilities" not in report.extra
        assert node.props_asked == 2 and node.seen["/health"] == 10
        assert prober.sizes()["failed"] == 1
        prober.retain(set())
        assert prober.sizes()["failed"] == 0
    finally:
        await prober.close()
        await node.stop()


async def test_probes_reuse_one_connection_and_ask_show_once_per_model(emulator):
    node = emulator(models=["a", "b"])
    prober = Prober()
    backend = Backend(node.address, "ollama", node.address)
    try:
        for _ in range(10):
            report = await prober.check(backend, 5.0)
            assert report.healthy and set(report.extra["capabilities"]) == {"a:latest",
                                                                             "b:latest"}
        assert connections_to({node.port}) == 1  # kept open between probes, and only one
        requests = node.stats()["requests"]
        assert requests["/api/tags"] == 10 and requests["/api/ps"] == 10
        assert requests["/api/version"] == 1 and requests["/api/show"] == 2  # on the first look
    finally:
        await prober.close()
    assert connections_to({node.port}) == 0


async def test_a_hung_node_delays_no_other_nodes_probes(emulator):
    stuck, good = emulator(models=["m"]), emulator(models=["m"])
    cluster = ClusterRuntime.from_config(overrides={
        "ollama_nodes": [stuck.address, good.address], "health_interval": 0.1,
        "pool_health_timeout": 30, "model_sharding_enabled": False})
    await cluster.start()
    try:
        stuck.set_faults(hang=True, scope="all")
        await wait_for(lambda: stuck.stats()["in_flight"] == 1)  # its probe waits for an answer
        before = good.stats()["requests"]["/api/ps"]
        await wait_for(lambda: good.stats()["requests"]["/api/ps"] >= before + 5)
        # five rounds of the good node's probes came and went while that one probe hung
        assert stuck.stats()["in_flight"] == 1
        assert cluster.routes[POOL].nodes[good.address].healthy
    finally:
        await cluster.stop()


async def test_a_node_named_by_host_name_is_looked_up_on_every_probe(emulator):
    node = emulator(models=["m"])
    prober = Prober()
    named = Backend(f"localhost:{node.port}", "ollama", f"localhost:{node.port}")
    gone = Backend("node.invalid:11434", "ollama", "node.invalid:11434")
    try:
        assert (await prober.check(named, 5.0)).healthy
        # a kept-alive connection must not hide a name that no longer resolves
        report = await prober.check(gone, 5.0)
        assert not report.healthy and "cannot resolve node.invalid" in report.detail
    finally:
        await prober.close()
