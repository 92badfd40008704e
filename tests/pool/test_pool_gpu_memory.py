"""GPU memory of pool nodes: Ollama's `/api/ps` `size_vram` (from emulated nodes that report it as
Ollama does) is shown by `/sollol/nodes` and `sollol nodes` and used by memory-fit."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from sollol_plugins.policies.memory_fit import MemoryFit

from sollol.cli import build_cli
from sollol.core.router import POOL
from sollol.core.runtime import ClusterRuntime
from sollol.errors import NoRouteAvailable
from sollol.models import RouteRequest
from sollol.testing.emulator import EmulatedModel
from sollol.testing.emulator_models import ModelStore

GiB = 2**30
SIZE = 2_000_000_000  # the emulator's default model size
POLICY = {"plugins": ["ollama_pool", "policies"], "routing_policy": "memory-fit",
          "task_distribution_enabled": True, "model_sharding_enabled": True,
          "health_interval": 0.2}


def test_size_vram_is_the_part_on_the_gpu_as_ollama_reports_it() -> None:
    models = [EmulatedModel("a", size=SIZE), EmulatedModel("b", size=SIZE)]
    assert [e["size_vram"] for e in ModelStore.of(models).running()] == [SIZE, SIZE]
    assert [e["size_vram"] for e in ModelStore.of(models, gpu_memory=0).running()] == [0, 0]
    # a 3 GB GPU: the first model loaded fits whole, the second spills 1 GB to the CPU
    spilled = ModelStore.of(models, gpu_memory=3_000_000_000)
    spilled.mark_loaded("b", 300)
    entries = {e["name"]: e for e in spilled.running()}
    assert entries["a:latest"]["size_vram"] == SIZE
    assert entries["b:latest"]["size_vram"] == 1_000_000_000
    assert all(e["size"] == SIZE for e in entries.values())


def test_the_emulators_api_ps_reports_size_vram(emulator: Any) -> None:
    node = emulator(models=["m"], gpu_memory=GiB)
    (entry,) = httpx.get(node.url + "/api/ps", timeout=10).json()["models"]
    assert (entry["size"], entry["size_vram"]) == (SIZE, GiB)


def nodes_when_healthy(url: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while True:
        nodes = httpx.get(url + "/sollol/nodes", timeout=10).json()["nodes"]
        if sum(n["health"] == "healthy" for n in nodes) == count:
            return nodes
        assert time.monotonic() < deadline, nodes
        time.sleep(0.1)


def gpu_and_cpu_nodes(emulator: Any) -> tuple[Any, Any]:
    """A node with an 8 GiB GPU holding `m`, and a CPU-only node holding `m` in RAM."""
    models = ["m", EmulatedModel("big", loaded=False)]
    return (emulator(models=models, gpu_memory=8 * GiB),
            emulator(models=models, gpu_memory=0))


def test_gpu_memory_is_shown_and_memory_fit_decides_by_it(
    emulator: Any, pool_gateway: Any,
) -> None:
    gpu, cpu = gpu_and_cpu_nodes(emulator)
    gateway = pool_gateway(gpu.address, cpu.address, **POLICY,
                           pool_node_memory={gpu.address: "8GiB"})
    by_id = {n["id"]: n for n in nodes_when_healthy(gateway.url, 2)}
    assert by_id[gpu.address]["vram_used"] == SIZE
    assert by_id[gpu.address]["memory_free"] == 8 * GiB - SIZE
    assert by_id[gpu.address]["running"][0]["size_vram"] == SIZE
    assert by_id[cpu.address]["vram_used"] == 0  # all in RAM: Ollama says 0 on the GPU
    assert by_id[cpu.address]["memory_free"] is None  # nothing declared: free is not known

    # `big` (2 GB + KV + 10%) fits what the GPU node's loaded model leaves
    decision = httpx.get(gateway.url + "/sollol/route", params={"model": "big"},
                         timeout=10).json()
    assert (decision["route"], decision["backend"]) == ("pool", gpu.address), decision
    assert (f"node {gpu.address} has 6.1 GiB free of 8.0 GiB declared, after the 1.9 GiB its "
            "loaded models hold on the GPU (1 of 2 nodes fit)") in decision["reason"]
    numbers = decision["numbers"]["pool_nodes"]
    assert numbers[gpu.address]["vram_used_bytes"] == SIZE
    assert numbers[cpu.address] == {"free_bytes": None, "total_bytes": None,
                                    "vram_used_bytes": 0, "loaded": False, "fits": False}

    shown = CliRunner().invoke(build_cli(), ["nodes", "--gateway", gateway.url],
                               env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "6.1G/8.0G free, 1.9G on GPU" in shown.output
    assert "0.0G on GPU" in shown.output  # the CPU-only node: its models hold no GPU memory


async def test_without_declared_memory_memory_fit_says_what_the_nodes_report(
    emulator: Any,
) -> None:
    gpu, cpu = gpu_and_cpu_nodes(emulator)
    cluster = ClusterRuntime.from_config(overrides={
        "plugins": ["ollama_pool"], "ollama_nodes": [gpu.address, cpu.address],
        "health_interval": 0.2})
    await cluster.start()
    try:
        route = cluster.routes[POOL]
        deadline = time.monotonic() + 30
        while len(route.state().healthy) < 2:  # the first probes are under way
            assert time.monotonic() < deadline, route.snapshot()
            await asyncio.sleep(0.05)
        state = route.state()
        assert [b.vram_used for b in state.backends] == [SIZE, 0]
        assert all(b.memory_free is None for b in state.backends)
        info = await route.model_info("big")
        with pytest.raises(NoRouteAvailable) as raised:
            MemoryFit().decide(RouteRequest(model="big"), info, {POOL: state})
    finally:
        await cluster.stop()
    message = str(raised.value)
    assert "the 2 pool nodes with big declare no memory" in message
    assert (f"they report only what loaded models hold on the GPU: 1.9 GiB on node "
            f"{gpu.address}") in message
