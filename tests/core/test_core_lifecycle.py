"""Lifecycle and metrics hooks: startup/shutdown around a running gateway, an event per request."""

from __future__ import annotations

import asyncio

import ollama
import pytest

from sollol.config import load_config
from sollol.core.plugin_manager import get_plugin_manager
from sollol.core.router import POOL
from sollol.core.runtime import ClusterRuntime
from sollol.gateway import GatewayThread
from sollol.hookspecs import hookimpl
from sollol.models import RouteEvent
from sollol.testing.static_route import RoutesPlugin, StaticRoute, Upstream


class LifecyclePlugin:
    """Runs a background task between startup and shutdown, and counts routed requests."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.events: list[RouteEvent] = []
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            self.ticks += 1
            await asyncio.sleep(0.01)

    @hookimpl
    def sollol_startup(self, cluster: ClusterRuntime):
        assert cluster.routes, "routes are started before startup hooks run"
        self.calls.append("startup")
        self._task = asyncio.get_running_loop().create_task(self._tick())

    @hookimpl
    async def sollol_shutdown(self, cluster: ClusterRuntime) -> None:
        self.calls.append("shutdown")
        assert self._task is not None
        self._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self._task

    @hookimpl
    def sollol_request_routed(self, event: RouteEvent) -> None:
        self.events.append(event)


def test_startup_shutdown_and_request_routed_hooks(emulator) -> None:
    node = emulator(models=["tiny"])
    pm = get_plugin_manager(load_entry_points=False)
    lifecycle = LifecyclePlugin()
    pm.register(RoutesPlugin([StaticRoute(POOL, [Upstream("node", node.url, "ollama", ["tiny"])])]))
    pm.register(lifecycle, name="lifecycle")
    cluster = ClusterRuntime(config=load_config(), pm=pm)
    thread = GatewayThread(cluster).start()
    try:
        assert lifecycle.calls == ["startup"]
        client = ollama.Client(host=thread.url)
        client.generate(model="tiny", prompt="hello")
        with pytest.raises(ollama.ResponseError):
            client.generate(model="missing", prompt="hello")
    finally:
        thread.stop()
    assert lifecycle.calls == ["startup", "shutdown"]
    assert lifecycle.ticks > 0
    ok = [e for e in lifecycle.events if e.ok]
    assert [(e.model, e.route, e.backend, e.status) for e in ok] == [("tiny", POOL, "node", 200)]
    assert ok[0].duration_s > 0
    assert cluster.events.recent()[-len(lifecycle.events):] == lifecycle.events
