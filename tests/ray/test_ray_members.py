"""The Ray plugin on a real local Ray cluster (a head and a worker, separate raylets on
127.0.0.2 and 127.0.0.3): rpc-servers as actors, sharded requests over them, members leaving
with their actor or node, a node that joins later, and nothing left behind."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from sollol.cli import build_cli
from sollol.core.processes import command_name, descendants, ignores_sigpipe, running
from sollol.testing.ray_cluster import RayCluster

pytestmark = [pytest.mark.llamacpp, pytest.mark.slow]
MESSAGES = [{"role": "user", "content": "hello over ray"}]


def ray_status(url: str) -> dict[str, Any]:
    return httpx.get(url + "/sollol/ray", timeout=10).json()


def wait_members(url: str, check: Any, timeout: float = 120) -> list[dict[str, Any]]:
    """Poll the gateway's Ray report until `check(running members)` holds; those members."""
    deadline = time.monotonic() + timeout
    while True:
        report = ray_status(url)
        running = [m for m in report["members"] if m["state"] == "running"]
        if check(running):
            return running
        if time.monotonic() > deadline:
            raise AssertionError(f"Ray members never matched: {report}")
        time.sleep(0.1)  # the watch has no event the test can wait on


def chat(url: str, model: str) -> str:
    response = httpx.post(url + "/v1/chat/completions", timeout=180, json={
        "model": model, "messages": MESSAGES, "max_tokens": 8, "temperature": 0})
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def sharding(url: str) -> dict[str, Any]:
    return httpx.get(url + "/sollol/routes/sharding", timeout=10).json()


def rpc_backends(url: str) -> set[str]:
    return {b["address"] for b in sharding(url)["backends"]}


def coordinator_addresses(url: str) -> list[str]:
    (coordinator,) = [c for c in sharding(url)["coordinators"] if c.get("alive", True)]
    return [b["address"] for b in coordinator["layers"]["backends"]]


def rpc_server_pids(cluster: RayCluster) -> set[int]:
    """Every ggml-rpc-server running under any node of the Ray cluster."""
    found = set()
    for node in cluster.nodes:
        found |= {pid for pid in descendants(node.process.pid)
                  if command_name(pid).startswith("ggml-rpc") and running(pid)}
    return found


def test_rpc_servers_on_two_ray_nodes_serve_a_sharded_model_and_an_actor_that_dies_leaves(
        ray_cluster: RayCluster, ray_gateway, tiny_model: Path) -> None:
    import ray

    gateway = ray_gateway(rpc_placement="all")
    members = wait_members(gateway.url, lambda ms: len(ms) == 2)
    ips = sorted(m["ip"] for m in members)
    assert ips == ["127.0.0.2", "127.0.0.3"]  # one per Ray node, on the node's own address
    addresses = {m["address"] for m in members}
    assert all(m["address"].startswith(m["ip"] + ":") for m in members)
    assert rpc_backends(gateway.url) == addresses
    assert all(m["devices"] for m in members)  # what the rpc-server reported
    assert all(f"/{m['ip'].rsplit('.', 1)[1]}/session_" in m["log"] for m in members)
    assert all(ignores_sigpipe(m["pid"]) for m in members)  # a killed coordinator kills none

    model = str(tiny_model)
    assert chat(gateway.url, model)
    assert sorted(coordinator_addresses(gateway.url)) == sorted(addresses)

    result = CliRunner().invoke(build_cli(), ["ray", "status", "--gateway", gateway.url])
    assert result.exit_code == 0, result.output
    assert "connected; 2 alive node(s)" in result.output
    for address in addresses:
        assert address in result.output

    # ray.kill one actor (the gateway's driver runs in this process: its actors are visible)
    victim = next(m for m in members if m["ip"] == "127.0.0.3")
    names = [name for name in _actor_names(ray) if name.endswith(victim["id"].split("-", 1)[1])]
    assert len(names) == 1, names
    ray.kill(ray.get_actor(names[0], namespace="sollol"), no_restart=True)
    _wait_gone(victim["pid"])  # its rpc-server died with the actor (PR_SET_PDEATHSIG)
    _wait_left(gateway.url, victim["address"], "the killed actor's rpc-server")
    # the coordinator restarts without it and serves; a fresh actor rejoins for that node
    assert chat(gateway.url, model)
    assert victim["address"] not in coordinator_addresses(gateway.url)
    again = wait_members(gateway.url, lambda ms: len(ms) == 2
                         and victim["address"] not in {m["address"] for m in ms})
    assert sorted(m["ip"] for m in again) == ["127.0.0.2", "127.0.0.3"]

    pids = {m["pid"] for m in again}
    assert pids <= rpc_server_pids(ray_cluster)
    gateway.stop()
    for pid in pids:
        _wait_gone(pid)
    assert not rpc_server_pids(ray_cluster)  # no ggml-rpc-server left on any node
    assert not _actor_names(None, ray_cluster.address)  # and no actor of ours


def test_a_dead_raylet_takes_its_member_out_and_a_node_added_later_joins(
        ray_cluster: RayCluster, ray_gateway, tiny_model: Path) -> None:
    extra = ray_cluster.add_node()  # a third raylet, on 127.0.0.4
    gateway = ray_gateway(rpc_placement="all")
    members = wait_members(gateway.url, lambda ms: len(ms) == 3)
    model = str(tiny_model)
    assert chat(gateway.url, model)
    victim = next(m for m in members if m["ip"] == extra.ip)

    extra.kill_raylet()  # the node crashes: its workers (and so its rpc-server) go with it
    _wait_gone(victim["pid"])
    _wait_left(gateway.url, victim["address"], "the dead node's rpc-server")
    assert chat(gateway.url, model)
    assert victim["address"] not in coordinator_addresses(gateway.url)
    ray_cluster.remove_node(extra)  # raises if any process of that node is left
    assert not extra.leftovers()
    assert all(node.process.alive() for node in ray_cluster.nodes)  # exactly that node's

    later = ray_cluster.add_node()  # Ray gains a node: an actor starts there and it joins
    joined = wait_members(gateway.url, lambda ms: later.ip in {m["ip"] for m in ms})
    newcomer = next(m for m in joined if m["ip"] == later.ip)
    deadline = time.monotonic() + 60
    while newcomer["address"] not in rpc_backends(gateway.url):
        assert time.monotonic() < deadline, "the new node's rpc-server never joined"
        time.sleep(0.05)
    gateway.stop()
    _wait_gone(newcomer["pid"])
    assert not rpc_server_pids(ray_cluster)
    ray_cluster.remove_node(later)


def _actor_names(ray: Any, address: str | None = None) -> list[str]:
    """Names of the live actors in the `sollol` namespace (a fresh driver when `address`)."""
    import subprocess
    import sys

    if address is None:
        from ray.util import list_named_actors

        return [a["name"] for a in list_named_actors(all_namespaces=True)
                if a["namespace"] == "sollol"]
    code = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR', "
            "log_to_driver=False); from ray.util import list_named_actors; "
            "print('\\n'.join(a['name'] for a in list_named_actors(all_namespaces=True) "
            "if a['namespace'] == 'sollol'))")
    out = subprocess.run([sys.executable, "-c", code, address], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def _wait_left(url: str, address: str, what: str, timeout: float = 60) -> None:
    """Until the gateway's sharding route no longer lists `address`."""
    deadline = time.monotonic() + timeout
    while address in rpc_backends(url):
        assert time.monotonic() < deadline, f"{what} never left"
        time.sleep(0.05)


def _wait_gone(pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while running(pid):
        assert time.monotonic() < deadline, f"process {pid} still runs"
        time.sleep(0.05)  # no event for another process's end


def test_a_pool_model_runs_as_a_llama_server_actor_and_serves_through_the_pool(
        ray_cluster: RayCluster, ray_env: None, tiny_model: Path, llama_binaries) -> None:
    from sollol.core.plugin_manager import get_plugin_manager
    from sollol.core.runtime import ClusterRuntime, load
    from sollol.gateway import GatewayThread

    plugins = ["ollama_pool", "ray"]
    config, _pm = load(overrides={
        "plugins": plugins, "model_sharding_enabled": False, "ray_address": ray_cluster.address,
        "ray_rpc_per": "none", "ray_pool_models": {"tiny-ray": str(tiny_model)},
        "ray_watch_interval": 0.3, "llama_cpp_dir": str(llama_binaries.llama_server.parent)})
    with GatewayThread(ClusterRuntime(config=config, pm=get_plugin_manager(plugins))) as gw:
        (member,) = wait_members(gw.url, lambda ms: len(ms) == 1)
        assert member["id"] == "ray-tiny-ray" and member["kind"] == "pool"
        assert member["ip"] in {node.ip for node in ray_cluster.nodes}
        assert chat(gw.url, "tiny-ray")
        nodes = httpx.get(gw.url + "/sollol/routes/pool", timeout=10).json()["nodes"]
        assert member["address"] in {n["address"] for n in nodes}
    _wait_gone(member["pid"])  # the llama-server ended with the gateway's actor


def test_per_gpu_a_node_gets_one_rpc_server_per_gpu_ray_lists_and_a_cpu_node_none(
        ray_cluster: RayCluster, ray_gateway) -> None:
    gpu_node = ray_cluster.add_node(num_gpus=2)  # Ray's GPU resource, as `ray start` declares it
    try:
        gateway = ray_gateway(ray_rpc_per="gpu", ray_rpc_cpus=0.5)
        members = wait_members(gateway.url, lambda ms: len(ms) == 2)
        assert {m["ip"] for m in members} == {gpu_node.ip}
        assert sorted(m["id"].rsplit("-", 1)[1] for m in members) == ["g0", "g1"]
        assert rpc_backends(gateway.url) == {m["address"] for m in members}
        gateway.stop()
        for member in members:
            _wait_gone(member["pid"])
    finally:
        ray_cluster.remove_node(gpu_node)
    assert all(node.process.alive() for node in ray_cluster.nodes)  # the others run on


def test_an_actor_that_cannot_start_is_reported_and_tried_again_later(
        ray_cluster: RayCluster, ray_gateway, tmp_path: Path) -> None:
    empty = tmp_path / "no-llama-cpp"
    empty.mkdir()
    gateway = ray_gateway(llama_cpp_dir=str(empty))  # no binaries on any node
    deadline = time.monotonic() + 120
    while len((report := ray_status(gateway.url))["failures"]) < 2:
        assert time.monotonic() < deadline, report
        time.sleep(0.1)
    assert not [m for m in report["members"] if m["state"] == "running"]
    assert all(str(empty) in f["error"] and f["retry_in"] > 0 for f in report["failures"])
    assert not rpc_backends(gateway.url)
    result = CliRunner().invoke(build_cli(), ["ray", "status", "--gateway", gateway.url])
    assert result.exit_code == 0 and "failed    retry in" in result.output, result.output
    # tried again after its pause, which then doubles
    while True:
        report = ray_status(gateway.url)
        if report["failures"] and all(f["pause"] >= 10 for f in report["failures"]):
            break
        assert time.monotonic() < deadline, report
        time.sleep(0.1)


def test_a_gateway_killed_outright_leaves_no_actor_and_no_rpc_server(
        ray_cluster: RayCluster, ray_env: None, llama_binaries, processes) -> None:
    import os
    import signal
    import sys

    from sollol.core.processes import free_port

    port = free_port()
    env = {**os.environ, "SOLLOL_RAY_ADDRESS": ray_cluster.address,
           "SOLLOL_RAY_WATCH_INTERVAL": "0.3", "SOLLOL_MODEL_SHARDING_ENABLED": "true",
           "SOLLOL_TASK_DISTRIBUTION_ENABLED": "false",
           "SOLLOL_LLAMA_CPP_DIR": str(llama_binaries.llama_server.parent)}
    gateway = processes.start("sollol-run", [sys.executable, "-m", "sollol", "run", "--port",
                                             str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            members = wait_members(url, lambda ms: len(ms) == 2)
            break
        except httpx.HTTPError:  # not listening yet
            assert gateway.alive() and time.monotonic() < deadline, gateway.log_text()[-3000:]
            time.sleep(0.2)
    os.killpg(gateway.pid, signal.SIGKILL)  # no shutdown hook runs: Ray must end its actors
    gateway.popen.wait()
    for member in members:
        _wait_gone(member["pid"])  # the owner is gone: Ray killed its (non-detached) actors
    assert not rpc_server_pids(ray_cluster)
    assert not _actor_names(None, ray_cluster.address)
