"""Health probes, time-compressed: `health_interval` 0.05 s over dozens of emulated nodes served
by one process, so a minute holds what hours at the default 5 s interval would.

The gateway's cost is counted, not timed: CPU seconds from /proc divided by the probes the nodes
answered, memory read after every batch of probes, table sizes compared after thousands of
probes. The loops wait for numbers of probes; their deadlines only stop a stuck run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sized
from typing import Any

import attrs
import httpx
import pytest
from sollol_plugins.ollama_pool import node, node_capabilities

from sollol.core.router import POOL
from sollol.core.runtime import ClusterRuntime
from sollol.testing import idle_pool
from sollol.testing.emulator_fleet import EmulatorFleet

pytestmark = pytest.mark.slow
NODES = 40
INTERVAL = 0.05
MAX_MS_PER_PROBE = 1.0  # issue 29: 256 nodes at the default 5 s stay under 5% of a core
WARMUP_PROBES = 3000
WINDOW_PROBES = 1500
WINDOWS = 6
RSS_SLACK_KIB = 4 * 1024  # allocator noise; per-probe growth would pass it within a window
GIVE_UP_S = 600.0


def wait_probes(nodes: list[str], client: httpx.Client, target: int) -> None:
    deadline = time.monotonic() + GIVE_UP_S
    while idle_pool.probes(nodes, client) < target:
        assert time.monotonic() < deadline, f"the nodes never saw {target} probes"
        time.sleep(0.5)


def test_a_probe_costs_under_a_millisecond_and_memory_levels_off(processes):
    nodes = idle_pool.start_fleet(processes, NODES)
    url, gateway = idle_pool.start_gateway(processes, nodes, INTERVAL)
    idle_pool.wait_until_up(url, NODES)
    with httpx.Client(timeout=60) as client:
        wait_probes(nodes, client, WARMUP_PROBES)
        readings = [idle_pool.read(gateway, nodes, client)]
        for _ in range(WINDOWS):
            wait_probes(nodes, client, readings[-1].probes + WINDOW_PROBES)
            readings.append(idle_pool.read(gateway, nodes, client))
    assert gateway.alive()
    spent = readings[-1] - readings[0]
    print(f"\n{spent.probes} probes of {NODES} nodes: {spent.ms_per_probe:.3f} ms of gateway "
          f"CPU each; RSS {[r.rss_kib // 1024 for r in readings]} MiB, "
          f"peak {readings[-1].peak_kib // 1024} MiB")
    assert spent.ms_per_probe < MAX_MS_PER_PROBE
    # the high-water mark is reached in the first half and not passed in the second
    half = readings[len(readings) // 2]
    assert readings[-1].peak_kib - half.peak_kib <= RSS_SLACK_KIB, readings
    assert readings[-1].rss_kib <= half.peak_kib + RSS_SLACK_KIB, readings


def tables(root: object) -> dict[str, int]:
    """Sizes of every container held by `root` and by the attrs objects it holds (nodes, the
    prober, the index, the event log...), by attribute path."""
    sizes: dict[str, int] = {}
    seen: set[int] = set()

    def walk(obj: object, path: str, depth: int) -> None:
        if id(obj) in seen or depth > 3:
            return
        seen.add(id(obj))
        for field in attrs.fields(type(obj)):
            value = getattr(obj, field.name, None)
            where = f"{path}.{field.name}"
            if isinstance(value, (str, bytes)):
                continue
            if isinstance(value, Sized):
                sizes[where] = len(value)
                inner: Any = value.values() if isinstance(value, dict) else ()
                for item in list(inner)[:3]:  # e.g. the nodes: their own tables
                    if attrs.has(type(item)):
                        walk(item, f"{where}[]", depth + 1)
            elif attrs.has(type(value)):
                walk(value, where, depth + 1)

    walk(root, type(root).__name__, 0)
    return sizes


async def test_no_table_grows_with_probes():
    fleet = EmulatorFleet(NODES).start()
    try:
        cluster = ClusterRuntime.from_config(overrides={
            "ollama_nodes": fleet.addresses, "health_interval": INTERVAL,
            "model_sharding_enabled": False})
        await cluster.start()
        try:
            route = cluster.routes[POOL]

            async def after(probes: int) -> tuple[dict[str, int], int]:
                target = await asyncio.to_thread(fleet.requests, "/api/ps") + probes
                deadline = time.monotonic() + GIVE_UP_S
                while await asyncio.to_thread(fleet.requests, "/api/ps") < target:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.2)
                caches = {"show_cache": len(node_capabilities._show_cache),
                          "model_names": node.model_names.cache_info().currsize}
                return ({**tables(cluster), **tables(route), **caches},
                        len(asyncio.all_tasks()))

            before, tasks_before = await after(10 * NODES)
            later, tasks_later = await after(WARMUP_PROBES)
        finally:
            await cluster.stop()
    finally:
        fleet.stop()
    assert len(before) > 10  # the walk found the tables (nodes, prober, index, events...)
    grown = {name: (before[name], size) for name, size in later.items()
             if size > max(before.get(name, 0), NODES)}
    assert grown == {}
    assert tasks_later <= max(tasks_before, NODES + 5)  # a probe task per node at most
