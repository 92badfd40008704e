"""Live membership of the pool: nodes added and removed while the gateway serves, re-discovery on
an interval, config reloads (POST /sollol/reload and SIGHUP), and the warm-up of readmitted nodes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import time

import httpx
from click.testing import CliRunner

from sollol.cli import build_cli
from sollol.core.processes import free_port, wait_http
from sollol.core.router import POOL
from sollol.core.runtime import ClusterRuntime
from sollol.models import RouteRequest
from sollol.routes import Outcome
from sollol.testing.emulator import EmulatedModel

SENT_BY_A_PROGRAM = {"X-Requested-With": "test"}  # what the CLI sends; no web page can

cli = build_cli()
OK = Outcome(True, 200, tokens=10, seconds=0.1)
FAST = {"health_interval": 0.2, "pool_health_timeout": 0.5}


def wait_until(condition, what: str, limit: float = 30.0) -> None:
    """Poll for a condition (a bound on a hang, not a speed assertion)."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


async def await_until(condition, what: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.05)


async def settle() -> None:
    """Let the queued requests' tasks run (no I/O involved: a few loop turns)."""
    for _ in range(5):
        await asyncio.sleep(0)


def node_ids(gw) -> set[str]:
    return {n["id"] for n in httpx.get(gw.url + "/sollol/nodes").json()["nodes"]}


def test_nodes_join_and_leave_a_serving_gateway_and_in_flight_requests_finish(
        emulator, pool_gateway):
    a = emulator(models=["m"], tokens_per_second=40, response_tokens=40)
    b = emulator(models=["m"])
    gw = pool_gateway(a.address, **FAST)
    runner = CliRunner()
    result = runner.invoke(cli, ["nodes", "add", b.address, "--gateway", gw.url])
    assert result.exit_code == 0, result.output
    assert f"added {b.address}" in result.output and "healthy" in result.output
    assert node_ids(gw) == {a.address, b.address}
    again = runner.invoke(cli, ["nodes", "add", f"http://{b.address}", "--gateway", gw.url])
    assert again.exit_code == 0 and "already" in again.output

    # a stream that runs on `a` while `a` is removed ends complete, not cut
    body = {"model": "m", "prompt": "x", "stream": True}
    lines: list[dict] = []

    def stream() -> None:
        with httpx.stream("POST", gw.url + "/api/generate", json=body, timeout=60) as reply:
            for line in reply.iter_lines():
                if line:
                    lines.append(json.loads(line))

    threads = []
    for _ in range(4):  # 4 streams spread over a and b: at least one lands on a
        thread = threading.Thread(target=stream)
        thread.start()
        threads.append(thread)
    wait_until(lambda: a.stats()["requests"].get("/api/generate", 0) >= 1, "a stream on a")
    removed = runner.invoke(cli, ["nodes", "remove", a.address, "--gateway", gw.url])
    assert removed.exit_code == 0, removed.output
    assert f"removed {a.address}" in removed.output and "in flight finish" in removed.output
    snapshot = httpx.get(gw.url + "/sollol/nodes").json()
    assert [n["id"] for n in snapshot["nodes"]] == [b.address]
    assert [n["id"] for n in snapshot["draining"]] == [a.address]
    for thread in threads:
        thread.join(60)
    ends = [line for line in lines if line.get("done")]
    assert len(ends) == 4 and not any("error" in line for line in lines)
    assert httpx.get(gw.url + "/sollol/nodes").json()["draining"] == []
    served_by_a = a.stats()["requests"]["/api/generate"]
    for _ in range(4):
        reply = httpx.post(gw.url + "/api/generate", json={**body, "stream": False}, timeout=30)
        assert reply.headers["x-sollol-backend"] == b.address
    assert a.stats()["requests"]["/api/generate"] == served_by_a
    # `sollol nodes` shows the live pool of the gateway
    listed = runner.invoke(cli, ["nodes", "--gateway", gw.url, "--json"])
    assert [n["id"] for n in json.loads(listed.output)["nodes"]] == [b.address]


def test_admin_errors_are_4xx_json_and_cli_messages(emulator, pool_gateway):
    a = emulator(models=["m"])
    gw = pool_gateway(a.address, **FAST)
    bad = httpx.post(gw.url + "/sollol/nodes", json={"address": "ftp://x:1"})
    assert bad.status_code == 400 and "unknown scheme" in bad.json()["error"]
    empty = httpx.post(gw.url + "/sollol/nodes", json={})
    assert empty.status_code == 400 and "address" in empty.json()["error"]
    broken = httpx.post(gw.url + "/sollol/nodes", content=b"{nope",
                        headers={"Content-Type": "application/json"})
    assert broken.status_code == 400 and "invalid JSON" in broken.json()["error"]
    unknown = httpx.delete(gw.url + "/sollol/nodes/10.9.9.9:1", headers=SENT_BY_A_PROGRAM)
    assert unknown.status_code == 404 and a.address in unknown.json()["error"]
    no_sharding = httpx.post(gw.url + "/sollol/rpc", json={"address": "127.0.0.1:1"})
    assert no_sharding.status_code == 503 and "sharding" in no_sharding.json()["error"]
    runner = CliRunner()
    result = runner.invoke(cli, ["nodes", "remove", "10.9.9.9:1", "--gateway", gw.url])
    assert result.exit_code == 1 and "is not a pool node" in result.output
    result = runner.invoke(cli, ["rpc", "add", "127.0.0.1:1", "--gateway", gw.url])
    assert result.exit_code == 1 and "sharding" in result.output
    nobody = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(cli, ["nodes", "add", a.address, "--gateway", nobody])
    assert result.exit_code == 1 and "no gateway answers" in result.output


def test_a_removed_node_fails_the_requests_pinned_to_it(emulator, pool_gateway):
    a, b = emulator(models=["m"]), emulator(models=["m", "only-a"])
    gw = pool_gateway(a.address, b.address, **FAST)
    assert httpx.delete(gw.url + f"/sollol/nodes/{b.address}",
                        headers=SENT_BY_A_PROGRAM).status_code == 200
    reply = httpx.post(gw.url + "/api/generate", json={"model": "only-a", "prompt": "x",
                                                        "stream": False})
    assert reply.status_code == 404  # no remaining node holds it


async def test_discovery_reruns_on_its_interval(emulator):
    port = free_port()
    cluster = ClusterRuntime.from_config(overrides={
        "plugins": ["ollama_pool"], "pool_discovery_cidr": "127.0.0.1/32",
        "pool_discovery_port": port, "discovery_interval": 0.2, **FAST})
    await cluster.start()
    try:
        route = cluster.routes[POOL]
        assert route.nodes == {}
        node = await asyncio.to_thread(lambda: emulator(models=["m"], port=port))
        await await_until(lambda: node.address in route.nodes, "the scan found the new node")
        await await_until(lambda: route.nodes[node.address].healthy, "it was probed")
        lease = await route.acquire(RouteRequest("m"))
        assert lease.backend.id == node.address
        lease.release(OK)
        # an operator's removal sticks: the next scans do not bring it back
        await route.remove_backend(node.address)
        await asyncio.sleep(0.6)  # three discovery rounds
        assert node.address not in route.nodes
        await route.add_backend(node.address)
        assert node.address in route.nodes
    finally:
        await cluster.stop()


async def test_reload_applies_node_changes_and_an_invalid_config_keeps_the_old_one(
        emulator, tmp_path, caplog):
    a, b = emulator(models=["m"]), emulator(models=["m"])
    path = tmp_path / "sollol.toml"
    path.write_text(f'plugins = ["ollama_pool"]\nollama_nodes = ["{a.address}"]\n'
                    "health_interval = 0.2\n")
    cluster = ClusterRuntime.from_config(path=path)
    await cluster.start()
    try:
        route = cluster.routes[POOL]
        admin = await route.add_backend(f"127.0.0.1:{free_port()}")  # operator-added: stays
        assert admin["added"]
        path.write_text(f'plugins = ["ollama_pool"]\nollama_nodes = ["{b.address}"]\n'
                        "health_interval = 0.2\npool_warmup_seconds = 3\ngateway_port = 9\n")
        report = await cluster.reload()
        assert report["ok"] and report["membership"] == {
            POOL: {"added": [b.address], "removed": [a.address]}}
        assert set(report["changed"]) == {"ollama_nodes", "pool_warmup_seconds", "gateway_port"}
        assert report["restart_needed"] == ["gateway_port"]
        assert route.settings.warmup_seconds == 3
        assert set(route.nodes) == {b.address, *admin["added"]}
        path.write_text('pool_node_concurrency = 0\n')
        with caplog.at_level("ERROR", logger="sollol"):
            failed = await cluster.reload()
        assert not failed["ok"] and "pool_node_concurrency" in failed["error"]
        assert "config reload failed" in caplog.text
        assert cluster.config["pool_warmup_seconds"] == 3
        assert set(route.nodes) == {b.address, *admin["added"]}
    finally:
        await cluster.stop()


def test_sighup_rereads_the_config_file_and_env(emulator, processes, isolated_config):
    a, b = emulator(models=["m"]), emulator(models=["m"])
    isolated_config.parent.mkdir(parents=True, exist_ok=True)
    isolated_config.write_text(f'plugins = ["ollama_pool"]\nollama_nodes = ["{a.address}"]\n')
    port = free_port()
    proc = processes.start("sollol-run", [sys.executable, "-m", "sollol", "run", "--port",
                                          str(port)], env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/api/version", process=proc, timeout=60)

    def ids() -> set[str]:
        return {n["id"] for n in httpx.get(url + "/sollol/nodes").json()["nodes"]}

    assert ids() == {a.address}
    isolated_config.write_text(f'plugins = ["ollama_pool"]\n'
                               f'ollama_nodes = ["{a.address}", "{b.address}"]\n')
    os.kill(proc.pid, signal.SIGHUP)
    wait_until(lambda: ids() == {a.address, b.address}, "SIGHUP added b")
    isolated_config.write_text("ollama_nodes = 7\n")  # invalid: the running config stays
    os.kill(proc.pid, signal.SIGHUP)
    wait_until(lambda: "config reload failed" in proc.log_text(), "the error was logged")
    assert ids() == {a.address, b.address}
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.popen.wait(timeout=30) == 0
    log = proc.log_text()
    assert f"config reloaded: ollama_nodes changed; pool: added {b.address}" in log
    assert "Traceback" not in log


async def test_a_readmitted_node_warms_up_instead_of_taking_a_burst(emulator):
    """A node that served, went down and came back cold (the emulator's model unloaded, with a
    load delay) takes one request; more only as requests there succeed."""
    a = emulator(models=[EmulatedModel("m", load_seconds=0.5)])
    b = emulator(models=["m"])
    cluster = ClusterRuntime.from_config(overrides={
        "plugins": ["ollama_pool"], "ollama_nodes": [a.address, b.address],
        "pool_node_concurrency": 4, "pool_warmup_seconds": 600, "pool_cold_penalty": 1.0,
        **FAST})
    slow = Outcome(True, 200, tokens=10, seconds=1.0)
    async with cluster:
        route = cluster.routes[POOL]
        node = route.nodes[a.address]
        for _ in range(2):  # a measures 10x faster than b: the balancer prefers it
            first = [await route.acquire(RouteRequest("m")) for _ in range(2)]
            for lease in first:
                lease.release(OK if lease.backend.id == a.address else slow)
        assert node.served >= 1 and node.cap == 4
        await asyncio.to_thread(a.refuse)
        await await_until(lambda: not node.available(route.now()), "a went down")
        await asyncio.to_thread(a.set_loaded, "m", False)  # it restarted: the model is cold
        await asyncio.to_thread(a.clear_faults)
        await await_until(lambda: node.available(route.now()), "a was readmitted")
        assert node.cap == 1 and route.snapshot()["nodes"][0]["warming"]["cap"] == 1
        tasks = [asyncio.create_task(route.acquire(RouteRequest("m"))) for _ in range(5)]
        await settle()
        on_a = [t.result() for t in tasks if t.done() and t.result().backend.id == a.address]
        # warm, the faster node would have taken 4 of the 5 at once; cold, it takes one
        assert len(on_a) == 1 and node.in_flight == 1
        on_a[0].release(OK)
        await settle()
        assert node.cap == 2 and node.in_flight == 2
        released = 0
        while released < 4:
            leases = [t.result() for t in tasks if t.done() and t.result().backend.id
                      == a.address and not t.result().released]
            assert node.in_flight <= node.cap
            for lease in leases:
                lease.release(OK)
                released += 1
            await settle()
        assert node.cap == 4 and not node.warming  # 1 -> 2 -> 4: warm
        for task in tasks:
            if not task.result().released:
                task.result().release(slow)


def test_every_core_setting_is_either_live_or_needs_a_restart():
    """A reload's "needs a restart" list is only true if each core key is classified."""
    from sollol.config import CORE_SETTINGS
    from sollol.core.membership import LIVE_CORE_KEYS, RESTART_CORE_KEYS

    names = {s.name for s in CORE_SETTINGS}
    assert not LIVE_CORE_KEYS & RESTART_CORE_KEYS
    assert names - LIVE_CORE_KEYS - RESTART_CORE_KEYS == set()


async def test_reload_applies_aliases_and_fallbacks_at_once_and_says_so(emulator, tmp_path):
    from sollol.core.aliases import targets

    node = emulator(models=["m", "n"])
    path = tmp_path / "sollol.toml"
    head = f'plugins = ["ollama_pool"]\nollama_nodes = ["{node.address}"]\n'
    path.write_text(head)
    cluster = ClusterRuntime.from_config(path=path)
    await cluster.start()
    try:
        path.write_text(head + '[model_aliases]\nfast = "m"\n'
                               '[model_fallbacks]\ngone = ["n"]\n')
        report = await cluster.reload()
        assert report["ok"] and set(report["changed"]) == {"model_aliases", "model_fallbacks"}
        assert report["restart_needed"] == []
        # what every request reads (dispatch asks targets() of the runtime's current config)
        assert [t.model for t in targets(cluster.config, "fast")] == ["m"]
        assert [t.model for t in targets(cluster.config, "gone")] == ["gone", "n"]
    finally:
        await cluster.stop()
