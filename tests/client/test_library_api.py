"""`sollol.Cluster` single requests over emulated nodes: sync and async, lifecycle, errors,
failover."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

import sollol
from sollol.client.tasks import Task
from sollol.config import load_config
from sollol.core.plugin_manager import get_plugin_manager
from sollol.core.runtime import ClusterRuntime as Runtime
from sollol.errors import ModelNotFound, NoRouteAvailable, RequestError
from sollol.hookspecs import hookimpl
from sollol.testing.static_route import RoutesPlugin, StaticRoute, Upstream

MODEL = "llama3.2:1b"


def test_import_sollol_has_no_side_effects() -> None:
    code = ("import sys, sollol; "
            "heavy = [m for m in ('sollol.client.facade', 'aiohttp', 'uvicorn', "
            "'sollol.core.runtime') "
            "if m in sys.modules]; print(heavy); "
            "assert not heavy, heavy; assert sollol.Cluster.__module__ == 'sollol.client.facade'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


def test_sync_chat_generate_embed(emulator, pool_cluster) -> None:
    nodes = [emulator(models=[MODEL]) for _ in range(2)]
    cluster = pool_cluster([n.url for n in nodes])
    with cluster as c:
        assert c.running
        chat = c.chat(MODEL, "hello", system="be brief")
        assert chat.op == "chat" and chat.text and chat.message["role"] == "assistant"
        assert chat.route == "pool" and chat.backend in {n.address for n in nodes}
        assert chat.tokens > 0
        generated = c.generate(MODEL, "once upon a time", options={"num_predict": 3})
        assert generated.text and generated.tokens == 3
        embedded = c.embed(MODEL, ["a", "b", "c"])
        assert len(embedded.embeddings) == 3 and embedded.text == ""
        runtime = c.runtime
    assert not cluster.running and not runtime.started
    with pytest.raises(RuntimeError, match="not started"):
        cluster.chat(MODEL, "hello again")


async def test_async_api_on_the_callers_loop(emulator, pool_cluster) -> None:
    node = emulator(models=[MODEL])
    async with pool_cluster([node.url]) as c:
        replies = await asyncio.gather(*(c.achat(MODEL, f"question {i}") for i in range(5)))
        assert all(r.text for r in replies)
        assert (await c.agenerate(MODEL, "hi")).text
        assert len((await c.aembed(MODEL, "one")).embeddings) == 1
        with pytest.raises(RuntimeError, match="async ones"):
            c.chat(MODEL, "sync call on the cluster's own loop")
    assert node.stats()["requests"]["/api/chat"] == 5


def test_async_methods_on_a_cluster_started_synchronously(emulator, pool_cluster) -> None:
    node = emulator(models=[MODEL])
    with pool_cluster([node.url]) as c:
        async def ask() -> list[str]:
            replies = await asyncio.gather(*(c.achat(MODEL, f"q{i}") for i in range(3)))
            return [r.text for r in replies]

        assert all(asyncio.run(ask()))


def test_errors_are_raised_as_sollol_errors(emulator, pool_cluster) -> None:
    node = emulator(models=[MODEL])
    with pool_cluster([node.url]) as c:
        with pytest.raises(ModelNotFound, match="no-such-model"):
            c.chat("no-such-model", "hi")
        with pytest.raises(RequestError, match="options"):
            c.generate(MODEL, "hi", options=["not", "an", "object"])
        node.refuse()
        with pytest.raises(NoRouteAvailable):
            c.chat(MODEL, "the only node is down")


def test_failover_to_a_healthy_node(emulator, pool_cluster) -> None:
    good, bad = (emulator(models=[MODEL], tokens_per_second=100) for _ in range(2))
    with pool_cluster([bad.url, good.url]) as c:
        bad.set_faults(error_status=500)
        # Eight at once: more than one node's four slots, so the balancer must use both.
        results = c.gather([f"q{i}" for i in range(8)], model=MODEL, concurrency=8)
    assert all(r.ok for r in results), [r.error for r in results]
    assert {r.response.backend for r in results} == {good.address}
    assert bad.stats()["injected"], "the failing node was never tried"


async def test_a_running_runtime_is_shared_not_stopped(emulator) -> None:
    node = emulator(models=[MODEL])
    pm = get_plugin_manager(load_entry_points=False)
    pm.register(RoutesPlugin([StaticRoute("pool", [Upstream("n", node.url, "ollama", (MODEL,))])]))
    runtime = Runtime(config=load_config(overrides={}), pm=pm)
    async with runtime:
        async with sollol.Cluster(runtime=runtime) as c:
            assert (await c.achat(MODEL, "hi")).backend == "n"
        assert runtime.started, "the facade stopped a runtime it did not start"
    with pytest.raises(TypeError, match="either a runtime"):
        sollol.Cluster(runtime=runtime, nodes=["127.0.0.1:1"])


def test_start_twice_and_mismatched_stop(emulator, pool_cluster) -> None:
    node = emulator(models=[MODEL])
    cluster = pool_cluster([node.url])
    with cluster:
        with pytest.raises(RuntimeError, match="already started"):
            cluster.start()
        with pytest.raises(RuntimeError, match="stop\\(\\)"):
            asyncio.run(cluster.astop())
    cluster.stop()  # stopping a stopped cluster is harmless


class _Watcher:
    """A test plugin that records the lifecycle hooks and every routed request."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.events: list[object] = []

    @hookimpl
    async def sollol_startup(self, cluster: Runtime) -> None:
        self.calls.append("startup")

    @hookimpl
    def sollol_shutdown(self, cluster: Runtime) -> None:
        self.calls.append("shutdown")

    @hookimpl
    def sollol_request_routed(self, event) -> None:
        self.events.append(event)


def test_library_runs_lifecycle_hooks_and_records_every_request(emulator) -> None:
    node = emulator(models=[MODEL])
    pm = get_plugin_manager(load_entry_points=False)
    pm.register(RoutesPlugin([StaticRoute("pool", [Upstream("n", node.url, "ollama", (MODEL,))])]))
    watcher = _Watcher()
    pm.register(watcher)
    with sollol.Cluster(runtime=Runtime(config=load_config(overrides={}), pm=pm)) as c:
        assert watcher.calls == ["startup"]
        results = c.gather([Task.chat(MODEL, "a"), Task.embed(MODEL, "b"),
                            Task.chat("absent", "c")])
        recorded = c.runtime.events.recent()
    assert watcher.calls == ["startup", "shutdown"]
    assert [r.ok for r in results] == [True, True, False]
    assert len(watcher.events) == len(recorded) == 3
    assert sorted((e.endpoint, e.ok) for e in watcher.events) == [
        ("chat", False), ("chat", True), ("embed", True)]
    assert all(e.route == "pool" or not e.ok for e in watcher.events)
