"""Devices of rpc-servers: which ones `sollol rpc serve` serves, their names, GPU warnings."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomli_w
from click.testing import CliRunner
from sollol_plugins.llamacpp_rpc import rpc_devices
from sollol_plugins.llamacpp_rpc.plan import place

from sollol.cli import build_cli
from sollol.cli.checks import gpu_finding
from sollol.errors import SollolError
from sollol.llamacpp import Binaries, toolchain
from sollol.llamacpp.devices import Device
from sollol.models import ShardOffer

MiB = 2**20
VULKAN = Device("Vulkan0", "llvmpipe (LLVM 15.0.6, 256 bits)", 2048 * MiB, 2048 * MiB)
CUDA0 = Device("CUDA0", "NVIDIA RTX 3090", 24 * 1024 * MiB, 23 * 1024 * MiB)
CPU = Device("CPU", "AMD EPYC", 24000 * MiB, 24000 * MiB)
NVIDIA_NO_TOOLKIT = toolchain.Choice("cpu", "", (toolchain.Finding(
    "cuda", "nvidia-smi", False, toolchain.CUDA_HINT),))


def test_by_default_every_gpu_is_served_else_the_cpu() -> None:
    assert rpc_devices.choose(None, [CUDA0, VULKAN, CPU]) == [CUDA0, VULKAN]
    assert rpc_devices.choose(None, [CPU]) == [CPU]
    assert rpc_devices.choose("CPU,Vulkan0", [VULKAN, CPU]) == [CPU, VULKAN]


@pytest.mark.parametrize("requested", ["CUDA1", "Vulkan0,Nope", ","])
def test_an_unknown_device_is_one_line_naming_what_exists(requested: str) -> None:
    with pytest.raises(SollolError) as caught:
        rpc_devices.choose(requested, [VULKAN, CPU])
    message = str(caught.value)
    assert "\n" not in message and message.startswith("unknown device")
    assert message.endswith("this ggml-rpc-server has Vulkan0, CPU")


def test_a_visible_gpu_served_by_a_cpu_build_warns_and_fails_doctor() -> None:
    warning = rpc_devices.gpu_warning([CPU], NVIDIA_NO_TOOLKIT.findings, "cpu")
    assert warning is not None and "sollol llamacpp install --backend cuda" in warning
    assert rpc_devices.gpu_warning([CUDA0], NVIDIA_NO_TOOLKIT.findings, "cuda") is None
    assert rpc_devices.gpu_warning([CPU], (), "cpu") is None

    finding = gpu_finding("cpu", (CPU,), NVIDIA_NO_TOOLKIT)
    assert finding.status == "fail"
    assert "shows a cuda GPU (nvidia-smi)" in finding.detail
    assert finding.fix.endswith("sollol llamacpp install --backend cuda")
    assert "nvidia-cuda-toolkit" in finding.fix  # the toolkit is missing too: say what to get
    ok = gpu_finding("vulkan", (VULKAN, CPU), NVIDIA_NO_TOOLKIT)
    assert ok.status == "ok" and "Vulkan0: llvmpipe" in ok.detail
    none = gpu_finding("cpu", (CPU,), toolchain.Choice("cpu", "", ()))
    assert none.status == "ok" and "no GPU visible" in none.detail


def test_device_records_name_a_local_rpc_servers_devices(tmp_path: Path) -> None:
    path = rpc_devices.record(tmp_path, "127.0.0.1", 50052, [VULKAN])
    assert rpc_devices.names(tmp_path, "127.0.0.1:50052") == ("Vulkan0",)
    assert rpc_devices.names(tmp_path, "localhost:50052") == ("Vulkan0",)
    assert rpc_devices.names(tmp_path, "10.0.0.9:50052") == ()  # another machine's port
    assert rpc_devices.names(tmp_path, "127.0.0.1:50053") == ()
    rpc_devices.record(tmp_path, "0.0.0.0", 50054, [CPU])
    assert rpc_devices.names(tmp_path, "192.168.1.4:50054") == ("CPU",)
    rpc_devices.forget(path)
    assert rpc_devices.names(tmp_path, "127.0.0.1:50052") == ()


def test_a_record_of_a_process_that_is_gone_is_ignored(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    path = rpc_devices.record(tmp_path, "127.0.0.1", 50052, [VULKAN])
    path.write_text(path.read_text().replace(f'"pid": {os.getpid()}',
                                             f'"pid": {done.stdout.strip()}'))
    assert rpc_devices.names(tmp_path, "127.0.0.1:50052") == ()


def test_a_mixed_placement_splits_by_each_devices_free_memory_and_says_so() -> None:
    offers = [ShardOffer("127.0.0.1:50052", (2048 * MiB,), devices=("Vulkan0",)),
              ShardOffer("127.0.0.1:50053", (1024 * MiB,), devices=("CPU",))]
    placement = place(2500 * MiB, offers, "fewest")
    assert placement.addresses == ("127.0.0.1:50052", "127.0.0.1:50053")
    assert placement.split == (0.6667, 0.3333)
    assert ("layers split by each device's free memory: 127.0.0.1:50052 Vulkan0 2.00 GiB free "
            "-> 67%, 127.0.0.1:50053 CPU 1.00 GiB free -> 33%") in placement.reason
    unnamed = place(2500 * MiB, [ShardOffer(o.address, o.free) for o in offers], "fewest")
    assert "127.0.0.1:50052 device 0 2.00 GiB free -> 67%" in unnamed.reason


def test_annotate_names_the_devices_of_each_coordinator_share() -> None:
    snapshot = {"backends": [{"address": "a:1", "device_names": ["Vulkan0"]},
                             {"address": "b:2", "device_names": []}],
                "coordinators": [{"layers": {"backends": [{"address": "a:1"},
                                                          {"address": "b:2"}]}},
                                 {"layers": None}]}
    shares = rpc_devices.annotate(snapshot)["coordinators"][0]["layers"]["backends"]
    assert [s["devices"] for s in shares] == [["Vulkan0"], []]


@pytest.mark.llamacpp
def test_rpc_serve_with_an_unknown_device_exits_in_one_line_leaving_nothing(
    llama_binaries, tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    config = tmp_path / "serve.toml"
    config.write_text(tomli_w.dumps({"llama_cpp_dir": str(llama_binaries.rpc_server.parent),
                                     "plugins": ["llamacpp_rpc"], "rpc_state_dir": str(state)}))
    result = subprocess.run([sys.executable, "-m", "sollol", "rpc", "serve", "--port", "1",
                             "--devices", "Vulkan7"], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "SOLLOL_CONFIG": str(config)})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "Error: unknown device Vulkan7: this ggml-rpc-server has CPU"]
    assert not state.exists()  # no device record, nothing started


@pytest.mark.llamacpp
def test_rpc_serve_warns_when_a_visible_gpu_would_go_unused(
    llama_binaries, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from sollol_plugins.llamacpp_rpc.rpc_commands import _devices

    nvidia = toolchain.Probe(which=lambda n: "/usr/bin/nvidia-smi" if n == "nvidia-smi" else None,
                             exists=lambda _p: False, glob=lambda _p: [], platform="linux")
    monkeypatch.setattr(toolchain, "Probe", lambda: nvidia)
    serving = _devices(llama_binaries, None, dict(os.environ))  # the CPU build
    assert [d.name for d in serving] == ["CPU"]
    warning = capsys.readouterr().err
    assert "shows a cuda GPU (nvidia-smi)" in warning
    assert "sollol llamacpp install --backend cuda" in warning


def named_backends(url: str) -> list[dict[str, Any]]:
    """The sharding route's rpc-servers in `/sollol/state`, once each is probed and named."""
    deadline = time.monotonic() + 60
    while True:
        state = httpx.get(url + "/sollol/state", timeout=10).json()
        backends = state["routes"]["sharding"]["backends"]
        if backends and all(b["healthy"] and b["device_names"] for b in backends):
            return backends
        assert time.monotonic() < deadline, backends
        time.sleep(0.1)


@pytest.mark.llamacpp
def test_state_overview_and_status_name_the_devices_sollol_rpc_serve_serves(
    rpc_serve: Any, sharding_gateway: Any, llama_binaries: Binaries, tmp_path: Path,
) -> None:
    address = rpc_serve(tmp_path / "sharding")  # the state dir the gateway's config uses
    gateway = sharding_gateway([address])

    (backend,) = named_backends(gateway.url)
    assert backend["address"] == address and backend["device_names"] == ["CPU"]
    assert [d["name"] for d in backend["devices"]] == ["CPU"]
    assert backend["devices"][0]["free"] > 0
    overview = httpx.get(gateway.url + "/sollol/overview", timeout=10).json()
    (server,) = overview["rpc_servers"]  # what the dashboard's rpc-server table shows
    assert [d["name"] for d in server["devices"]] == ["CPU"]

    shown = CliRunner().invoke(build_cli(), ["status", "--gateway", gateway.url],
                               env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    (row,) = [line for line in shown.output.splitlines() if address in line]
    assert "│ CPU " in row, shown.output


@pytest.mark.llamacpp
async def test_the_routes_backend_state_carries_the_device_names_for_policies(
    rpc_serve: Any, sharding_route: Any, llama_binaries: Binaries, tmp_path: Path,
) -> None:
    address = rpc_serve(tmp_path / "sharding")  # the state dir the gateway's config uses
    route = await sharding_route([address])
    deadline = time.monotonic() + 60
    while not route.state().healthy:  # the first probe is under way
        assert time.monotonic() < deadline, route.snapshot()
        await asyncio.sleep(0.05)
    (backend,) = route.state().backends
    assert backend.devices == ("CPU",) and backend.memory_free
