"""A real GPU backend: the Vulkan build of ggml-rpc-server on Mesa's lavapipe (a Vulkan device
that runs on the CPU), coordinated by the CPU build's llama-server.

Needs `sollol llamacpp install --backend vulkan` (scripts/test builds it once, cached) and the
Debian packages libvulkan-dev spirv-headers glslc mesa-vulkan-drivers. ggml-vulkan skips devices
of type CPU unless `GGML_VK_VISIBLE_DEVICES` lists them, so every rpc-server here gets `=0`.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
import tomli_w
from click.testing import CliRunner
from sollol_plugins.llamacpp_rpc.plan import place
from sollol_plugins.llamacpp_rpc.rpc_probe import probe
from sollol_plugins.llamacpp_rpc.shards import ShardRegistry
from test_rpc_cli import serve_rpc

from sollol.cli import build_cli
from sollol.core.processes import ProcessGroup, free_port, wait_http, wait_port
from sollol.llamacpp import Binaries, cache_root, spec_for
from sollol.llamacpp.devices import Device, rpc_server_devices
from sollol.models import Backend

pytestmark = [pytest.mark.llamacpp, pytest.mark.vulkan, pytest.mark.slow]
MiB = 2**20
LAVAPIPE = {"GGML_VK_VISIBLE_DEVICES": "0"}
PROMPT = "tell me about the shard layer"
LOGPROB_NOISE = 0.005
"""How far the two backends' log-probabilities of the same token may drift (f32 CPU kernels vs
Vulkan's shaders): measured at up to 0.0011 over several prompts with this model."""


@pytest.fixture(scope="session")
def vulkan_rpc_server() -> Path:
    """The cached Vulkan build of ggml-rpc-server; FAILS (never skips) when it is missing."""
    binary = cache_root() / spec_for("vulkan").key / "bin" / "ggml-rpc-server"
    if not os.access(binary, os.X_OK):
        pytest.fail(f"{binary} is missing: run `sollol llamacpp install --backend vulkan` (needs "
                    "apt-get install libvulkan-dev spirv-headers glslc mesa-vulkan-drivers)")
    return binary


@pytest.fixture(scope="session")
def vulkan_device(vulkan_rpc_server: Path) -> Device:
    found = [d for d in rpc_server_devices(vulkan_rpc_server, {**os.environ, **LAVAPIPE})
             if d.is_gpu]
    if not found:
        pytest.fail("the Vulkan rpc-server sees no Vulkan device: apt-get install "
                    "mesa-vulkan-drivers (Mesa's lavapipe)")
    return found[0]


def start_rpc(processes: ProcessGroup, binary: Path, device: str) -> str:
    port = free_port()
    proc = processes.start(f"rpc-{device}-{port}", [
        binary, "-H", "127.0.0.1", "-p", str(port), "-t", "1", "-d", device],
        env={**os.environ, **LAVAPIPE})
    wait_port("127.0.0.1", port, process=proc, timeout=60)
    return f"127.0.0.1:{port}"


def greedy_tokens(processes: ProcessGroup, binaries: Binaries, model: Path,
                  rpc: str) -> tuple[list[dict[str, Any]], str]:
    """The first 16 tokens of a greedy completion by a coordinator offloading all to `rpc`,
    each with its top two log-probabilities."""
    port = free_port()
    proc = processes.start(f"coordinator-{port}", [
        binaries.llama_server, "-m", model, "--host", "127.0.0.1", "--port", str(port),
        "-t", "1", "-c", "512", "--rpc", rpc, "-ngl", "99", "-lv", "4"])
    try:
        wait_http(f"http://127.0.0.1:{port}/health", process=proc, timeout=180)
        reply = httpx.post(f"http://127.0.0.1:{port}/completion", timeout=300, json={
            "prompt": PROMPT, "n_predict": 16, "temperature": 0, "ignore_eos": True,
            "n_probs": 2, "cache_prompt": False}).json()
        return reply["completion_probabilities"], proc.log_text()
    finally:
        proc.stop()


def test_the_vulkan_rpc_server_lists_lavapipe_and_which_reports_it(
    vulkan_rpc_server: Path, vulkan_device: Device, monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert vulkan_device.name == "Vulkan0"
    assert "llvmpipe" in vulkan_device.description
    assert vulkan_device.total > 0
    for name, value in LAVAPIPE.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(build_cli(), ["llamacpp", "which", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["backend"] == "vulkan" and data["rpc_server"] == str(vulkan_rpc_server)
    assert {"name": "Vulkan0", "gpu": True}.items() <= data["rpc_server_devices"][0].items()


def test_a_greedy_reply_on_vulkan_equals_the_cpu_shards_token_for_token(
    processes: ProcessGroup, llama_binaries: Binaries, vulkan_rpc_server: Path,
    vulkan_device: Device, tiny_model: Path,
) -> None:
    on_vulkan = start_rpc(processes, vulkan_rpc_server, "Vulkan0")
    on_cpu = start_rpc(processes, llama_binaries.rpc_server, "CPU")
    vulkan, log = greedy_tokens(processes, llama_binaries, tiny_model, on_vulkan)
    cpu, cpu_log = greedy_tokens(processes, llama_binaries, tiny_model, on_cpu)
    assert len(vulkan) == len(cpu) == 16
    for index, (on_gpu, on_host) in enumerate(zip(vulkan, cpu, strict=True)):
        # a random-weight model is nearly uniform (logprob ~ -6.4): where the top two tokens are
        # closer than the backends' rounding noise, greedy may pick either; this prompt has none
        top, second = (t["logprob"] for t in on_host["top_logprobs"])
        assert top - second > 2 * LOGPROB_NOISE, f"token {index} is a near-tie on the CPU"
        assert on_gpu["id"] == on_host["id"], f"token {index} differs: {on_gpu} vs {on_host}"
        assert abs(on_gpu["logprob"] - on_host["logprob"]) < LOGPROB_NOISE
    # every layer went over RPC to the Vulkan rpc-server, none stayed on the coordinator
    assert f"RPC0[{on_vulkan}] model buffer size" in log
    assert "offloaded 9/9 layers" in log and "offloaded 9/9 layers" in cpu_log


def test_memory_fit_plans_with_the_vulkan_devices_reported_memory(
    processes: ProcessGroup, vulkan_rpc_server: Path, vulkan_device: Device,
) -> None:
    address = start_rpc(processes, vulkan_rpc_server, "Vulkan0")
    host, port = address.rsplit(":", 1)
    registry = ShardRegistry(timeout=5.0)
    registry.update_backends([Backend(id=f"rpc:{address}", kind="rpc", address=address)])
    shard = registry.shards[address]
    asyncio.run(registry.probe(shard))
    assert shard.healthy, shard.detail
    (memory,) = shard.devices
    assert memory.total == vulkan_device.total  # the RPC probe sees what the device reports
    offer = registry.offer(shard)
    assert offer.free == (memory.free,)
    fits = place(memory.free // 2, [offer])
    assert fits.addresses == (address,)
    too_big = place(memory.free + 512 * MiB, [offer])
    assert too_big.addresses == ()
    assert f"the free rpc-servers have {memory.free / 2**30:.2f} GiB" in too_big.reason
    assert probe(host, int(port), 5).devices[0].total == memory.total


def serve(processes: ProcessGroup, config: Path, device: str) -> str:
    """`sollol rpc serve --devices DEVICE` as a user runs it; returns its address."""
    proc, port, _answer = serve_rpc(processes, config, "--devices", device,
                                    name=f"sollol-rpc-serve-{device}", env=LAVAPIPE,
                                    timeout=120)
    assert f"-d {device}" in proc.log_text()
    return f"127.0.0.1:{port}"


def test_a_mixed_cpu_and_vulkan_coordinator_through_the_gateway(
    processes: ProcessGroup, vulkan_device: Device, sharding_gateway: Any, tiny_model: Path,
    tmp_path: Path, isolated_config: Path,
) -> None:
    config = tmp_path / "serve.toml"  # the state dir the gateway's sharding config uses
    config.write_text(tomli_w.dumps({"plugins": ["llamacpp_rpc"],
                                     "rpc_state_dir": str(tmp_path / "sharding")}))
    on_vulkan = serve(processes, config, "Vulkan0")
    on_cpu = serve(processes, config, "CPU")
    # a CPU rpc-server offers all of its host's RAM: cap it at the Vulkan device's size so the
    # split by free memory is even and both devices hold layers of this 8-layer model
    cap = f"{vulkan_device.free // MiB} MiB"
    gateway = sharding_gateway([on_vulkan, on_cpu], rpc_placement="all",
                               rpc_backend_memory={on_cpu: cap})
    reply = ollama.Client(host=gateway.url, timeout=300).generate(
        model=str(tiny_model), prompt=PROMPT, options={"temperature": 0, "num_predict": 8})
    assert reply.response is not None and reply.done

    snapshot = httpx.get(gateway.url + "/sollol/routes/sharding", timeout=10).json()
    (coordinator,) = snapshot["coordinators"]
    shares = {s["address"]: s for s in coordinator["layers"]["backends"]}
    assert shares[on_vulkan]["devices"] == ["Vulkan0"] and shares[on_vulkan]["layers"] > 0
    assert shares[on_cpu]["devices"] == ["CPU"] and shares[on_cpu]["layers"] > 0
    reason = coordinator["placement"]["reason"]
    assert "layers split by each device's free memory" in reason
    assert f"{on_vulkan} Vulkan0" in reason and f"{on_cpu} CPU" in reason
    assert coordinator["tensor_split"] == "0.5000,0.5000"

    isolated_config.parent.mkdir(parents=True, exist_ok=True)
    isolated_config.write_text('plugins = ["llamacpp_rpc"]\n')
    result = CliRunner().invoke(build_cli(), ["shard", "status", "--json", "--url", gateway.url])
    assert result.exit_code == 0, result.output
    (shown,) = json.loads(result.output)["coordinators"]
    assert [s["devices"] for s in shown["layers"]["backends"]] == [["Vulkan0"], ["CPU"]]
    text = CliRunner().invoke(build_cli(), ["shard", "status", "--url", gateway.url]).output
    assert f"{on_vulkan} (Vulkan0)" in text and "on Vulkan0" in text

    state = httpx.get(gateway.url + "/sollol/state", timeout=10).json()["routes"]["sharding"]
    named = {b["address"]: [d["name"] for d in b["devices"]] for b in state["backends"]}
    assert named == {on_vulkan: ["Vulkan0"], on_cpu: ["CPU"]}
    status = CliRunner().invoke(build_cli(), ["status", "--gateway", gateway.url],
                                env={"COLUMNS": "220"})
    assert status.exit_code == 0, status.output
    assert f"{on_vulkan} (Vulkan0)" in status.output and f"{on_cpu} (CPU)" in status.output
    (row,) = [line for line in status.output.splitlines() if line.startswith(f"│ {on_vulkan}")]
    assert "│ Vulkan0 " in row, status.output
