"""Multi-host faults under load. Runs ONLY inside `run_isolated`
(tests/netns/test_netns_faults.py starts it there): every host is a network namespace on a
bridge, the gateway is a real `sollol run` process in its own namespace, nodes are emulated
Ollama processes and a real llama-server.

Not collected by a plain `pytest` run (the name does not start with `test_`): it must never run
in the machine's own namespace, and `require_isolated()` refuses to.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest

from sollol.core.processes import wait_http
from sollol.testing.delay_proxy import DelayProxy
from sollol.testing.faultload import (
    HealthWatch,
    append_report,
    check_load,
    load_during,
    plan_load,
)
from sollol.testing.netns import Host, Network, require_isolated

REPORT = os.environ.get("NETNS_FAULT_REPORT")
WORDS = " ".join(f"w{i}" for i in range(24))
TIMEOUTS = {"request_timeout": 6.0, "connect_timeout": 0.5, "stream_idle_timeout": 1.0,
            "health_interval": 0.5, "pool_health_timeout": 0.5, "pool_eject_seconds": 1.0,
            "pool_eject_max_seconds": 2.0, "pool_probe_backoff_max": 1.0,
            "pool_eject_failures": 2, "pool_queue_timeout": 6.0}
BOUND = TIMEOUTS["request_timeout"] + TIMEOUTS["pool_queue_timeout"] + 1.0
LOAD = 40


@attrs.define
class Cluster:
    """The hosts of the module's tests and how to reach the gateway."""

    net: Network
    gateway: Host
    nodes: dict[str, Host]
    node_ids: dict[str, str]  # host name -> the pool's node id
    starts: dict[str, Callable[[], Any]]
    proxy: DelayProxy
    url: str
    watch: HealthWatch
    figures: list[dict[str, Any]] = attrs.field(factory=list)

    def log_lines(self, host: str) -> list[str]:
        path = self.net.log_dir / f"{host}.requests"
        return path.read_text().splitlines() if path.exists() else []

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.watch.health(n) == "healthy" for n in self.node_ids.values()):
                return
            time.sleep(0.05)
        raise AssertionError(f"nodes not all healthy: {self.watch.changes}")


def _emulator(net: Network, host: Host) -> Callable[[], Any]:
    def start() -> Any:
        proc = host.start("emulator", [
            sys.executable, "-m", "sollol.testing.emulator", "--host", host.address,
            "--port", "11434", "--model", "m", "--tokens-per-second", "40",
            "--response-text", WORDS, "--parallel", "8",
            "--request-log", str(net.log_dir / f"{host.name}.requests")])
        wait_http(f"http://{host.address}:11434/api/version", process=proc, timeout=30)
        return proc
    return start


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, llama_binaries: Any,
            tiny_model: Path) -> Iterator[Cluster]:
    require_isolated()
    net = Network(log_dir=tmp_path_factory.mktemp("netns"))
    proxy = DelayProxy(("0.0.0.0", 0), ("0.0.0.0", 0))
    watch: HealthWatch | None = None
    try:
        net.start()
        gw = net.add_host("gw")
        nodes = {name: net.add_host(name) for name in ("n1", "n2", "n3", "ls")}
        starts: dict[str, Callable[[], Any]] = {
            name: _emulator(net, nodes[name]) for name in ("n1", "n2", "n3")}
        ls = nodes["ls"]

        def start_llama() -> Any:
            proc = ls.start("llama-server", [
                llama_binaries.llama_server, "-m", tiny_model, "--host", ls.address,
                "--port", "8080", "-t", "1", "-c", "4096", "--alias", "tiny"])
            wait_http(f"http://{ls.address}:8080/health", process=proc, timeout=120)
            return proc

        starts["ls"] = start_llama
        for start in starts.values():
            start()
        # n2 is reached through a delaying proxy in the outer namespace; n3 by a host name
        proxy = DelayProxy((net.router, 0), (nodes["n2"].address, 11434)).start()
        net.resolve("node3.test", nodes["n3"])
        node_ids = {"n1": f"{nodes['n1'].address}:11434", "n2": proxy.address,
                    "n3": "node3.test:11434", "ls": f"{ls.address}:8080"}
        addresses = [node_ids["n1"], node_ids["n2"], node_ids["n3"], f"openai://{node_ids['ls']}"]
        env = {**os.environ, "SOLLOL_CONFIG": str(net.log_dir / "config.toml"),
               "SOLLOL_OLLAMA_NODES": json.dumps(addresses),
               **{f"SOLLOL_{k.upper()}": str(v) for k, v in TIMEOUTS.items()}}
        # --insecure: no access keys on a test network no one else can reach
        gateway = gw.start("gateway", [sys.executable, "-m", "sollol", "run", "--host",
                                       gw.address, "--port", "11435", "--grace", "1",
                                       "--insecure"], env=env)
        url = f"http://{gw.address}:11435"
        wait_http(url + "/sollol/nodes", process=gateway, timeout=60)
        watch = HealthWatch(url).start()
        c = Cluster(net=net, gateway=gw, nodes=nodes, node_ids=node_ids, starts=starts,
                    proxy=proxy, url=url, watch=watch)
        c.wait_healthy()
        yield c
        append_report(REPORT, c.figures)
    finally:
        if watch is not None:
            watch.stop()
        proxy.stop()
        net.close()


def _load_during(c: Cluster, name: str, inject: Callable[[], None], *, model: str = "m",
                 count: int = LOAD, max_tokens: int | None = None, delay: float = 0.3,
                 ) -> tuple[list[Any], float]:
    """Start `count` concurrent requests, inject the fault `delay` seconds in, wait for all."""
    return load_during(c.url, plan_load(name, count, model=model, max_tokens=max_tokens),
                       inject, delay=delay)


def _record(c: Cluster, fault: str, node: str, results: list[Any], t_fault: float,
            t_repair: float | None, note: str = "") -> dict[str, Any]:
    node_id = c.node_ids[node]
    ok = sum(1 for r in results if r.error is None)
    cut = sum(1 for r in results if r.error is not None and r.chunks)
    refused = sum(1 for r in results if r.error is not None and not r.chunks)
    detect = c.watch.first_change(node_id, after=t_fault, to_healthy=False)
    recover = (c.watch.first_change(node_id, after=t_repair, to_healthy=True)
               if t_repair is not None else None)
    row = {"fault": fault, "node": node_id, "requests": len(results), "complete": ok,
           "cut_after_first_byte": cut, "errors_before_first_byte": refused,
           "longest_s": round(max(r.seconds for r in results), 2),
           "detect_s": None if detect is None else round(detect, 2),
           "recover_s": None if recover is None else round(recover, 2), "note": note,
           "sample_error": next((r.error for r in results if r.error), None)}
    c.figures.append(row)
    print(f"\nFAULT {json.dumps(row)}")
    return row


def _check(c: Cluster, results: list[Any], expected: str | None = WORDS) -> None:
    problems = check_load(results, expected=expected, nodes=list(c.node_ids.values()),
                          bound=BOUND)
    assert not problems, "\n".join(problems[:20])
    # nothing ran twice after its first byte: every complete reply ran once on its node, and
    # no request ran more often than its first try plus the gateway's two retries
    logs = {name: c.log_lines(name) for name in ("n1", "n2", "n3")}
    by_id = {c.node_ids[n]: n for n in logs}
    for r in results:
        needle = json.dumps(f"user: request {r.request.tag}")
        runs = {n: sum(line.endswith("\t" + needle) for line in lines)
                for n, lines in logs.items()}
        assert sum(runs.values()) <= 3, (r.request.tag, runs)
        if r.error is None and r.backend in by_id:
            assert runs[by_id[r.backend]] >= 1, (r.request.tag, r.backend, runs)


def _wait_state(c: Cluster, node: str, healthy: bool, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (c.watch.health(c.node_ids[node]) == "healthy") != healthy:
        if time.monotonic() > deadline:
            raise AssertionError(f"{node} never became {'healthy' if healthy else 'unhealthy'}:"
                                 f" {c.watch.changes.get(c.node_ids[node])}")
        time.sleep(0.05)


def test_node_killed_then_restarted_and_readmitted(cluster: Cluster) -> None:
    c = cluster
    procs = c.net.processes.processes
    victim = next(p for p in procs if p.name == "n1-emulator" and p.alive())
    results, t0 = _load_during(c, "kill", victim.kill)
    _check(c, results)
    _wait_state(c, "n1", healthy=False)
    t_repair = time.monotonic()
    c.starts["n1"]()
    _wait_state(c, "n1", healthy=True)
    row = _record(c, "node process killed (SIGKILL), then restarted", "n1", results, t0,
                  t_repair)
    assert row["detect_s"] is not None and row["recover_s"] is not None


def test_link_cut_packets_vanish(cluster: Cluster) -> None:
    c = cluster
    c.wait_healthy()
    host = c.nodes["n1"]
    try:
        results, t0 = _load_during(c, "cut", host.cut)
        _check(c, results)
        _wait_state(c, "n1", healthy=False)
    finally:
        t_repair = time.monotonic()
        host.restore()
    _wait_state(c, "n1", healthy=True)
    row = _record(c, "link cut (ip link set down: no RST, packets vanish)", "n1", results, t0,
                  t_repair)
    assert row["detect_s"] is not None


def test_link_rate_limited(cluster: Cluster) -> None:
    c = cluster
    c.wait_healthy()
    host = c.nodes["n1"]
    try:
        results, t0 = _load_during(c, "tbf", lambda: host.rate_limit("64kbit", burst="2kb"))
        _check(c, results)
    finally:
        t_repair = time.monotonic()
        host.clear_rate_limit()
    c.wait_healthy()
    _record(c, "link rate-limited (tc tbf 64kbit)", "n1", results, t0, t_repair,
            note="slower replies; ejected only if a request crossed a timeout")


def test_added_latency(cluster: Cluster) -> None:
    c = cluster
    c.wait_healthy()

    def slow() -> None:
        c.proxy.delay = 0.3

    try:
        results, t0 = _load_during(c, "latency", slow)
        _check(c, results)
    finally:
        t_repair = time.monotonic()
        c.proxy.delay = 0.0
    c.wait_healthy()
    _record(c, "300 ms added each way (delaying TCP proxy)", "n2", results, t0, t_repair,
            note="replies complete, later")


def test_node_name_stops_resolving(cluster: Cluster) -> None:
    c = cluster
    c.wait_healthy()
    try:
        results, t0 = _load_during(c, "dns", lambda: c.net.resolve("node3.test", None))
        _check(c, results)
        _wait_state(c, "n3", healthy=False)
    finally:
        t_repair = time.monotonic()
        c.net.resolve("node3.test", c.nodes["n3"])
    _wait_state(c, "n3", healthy=True)
    row = _record(c, "node's host name stops resolving (/etc/hosts edited)", "n3", results, t0,
                  t_repair)
    assert row["detect_s"] is not None


def test_llama_server_node_killed_and_restarted(cluster: Cluster) -> None:
    c = cluster
    c.wait_healthy()
    victim = next(p for p in c.net.processes.processes
                  if p.name == "ls-llama-server" and p.alive())
    results, t0 = _load_during(c, "llama", victim.kill, model="tiny", count=12, max_tokens=400,
                               delay=0.3)
    _check(c, results, expected=None)
    _wait_state(c, "ls", healthy=False)
    t_repair = time.monotonic()
    c.starts["ls"]()
    _wait_state(c, "ls", healthy=True)
    reply = httpx.post(c.url + "/api/chat", json={"model": "tiny", "stream": False, "messages": [
        {"role": "user", "content": "again"}], "options": {"num_predict": 4}}, timeout=60,
        trust_env=False)
    assert reply.status_code == 200 and reply.json()["done"]
    _record(c, "llama-server node killed, then restarted", "ls", results, t0, t_repair)
    assert any(r.error for r in results), "the kill came after the load: nothing was tested"
