"""Issue 23's acceptance test between hosts. Runs ONLY inside `run_isolated`
(tests/netns/test_join_cluster.py starts it there).

A gateway host (a real `sollol run` with access keys) and three worker hosts, each joined by one
`sollol join URL --token T` command: two offer their rpc-server (started by `sollol join` on the
host's loopback), one an emulated Ollama node on its loopback. An attacker host sits on the same
bridge. Not collected by a plain `pytest` run (the name does not start with `test_`).

Run it (root) with `sollol.testing.netns.run_isolated([python, "-m", "pytest", "-s",
"tests/netns/netns_join.py"])`; the runner tests/netns/test_join_cluster.py does that and prints
the figures (`NETNS_JOIN_REPORT`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from join_hosts import Joined, start_cluster  # tests/netns is on sys.path (no __init__.py)

from sollol.testing.faultload import append_report
from sollol.testing.gauges import rss_bytes
from sollol.testing.netns import Host, Network, require_isolated

REPORT = os.environ.get("NETNS_JOIN_REPORT")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, llama_binaries: Any,
            tiny_model: Path) -> Iterator[Joined]:
    require_isolated()
    net = Network(log_dir=tmp_path_factory.mktemp("join"), subnet=79, bridge="sollol-br3")
    try:
        net.start()
        joined = start_cluster(net, llama_binaries, tiny_model)
        yield joined
        append_report(REPORT, joined.figures)
    finally:
        net.close()


def _chat(c: Joined, model: str, client: httpx.Client | None = None) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False,
            "options": {"num_predict": 4}}
    if client is not None:
        return client.post("/api/chat", json=body)
    return httpx.post(c.url + "/api/chat", json=body, headers=c.auth, timeout=120,
                      trust_env=False)


def test_one_command_per_machine_serves_a_sharded_and_a_pool_request(cluster: Joined) -> None:
    c = cluster
    nodes = c.nodes()
    assert {"w1", "w2"} <= c.rpc_members(nodes), nodes
    assert "w3" in c.pool_members(nodes), nodes
    sharded = _chat(c, c.model)
    assert sharded.status_code == 200, sharded.text
    assert sharded.headers["x-sollol-route"] == "sharding"
    # the coordinator's --rpc names the gateway's local tunnel endpoints, one per joined worker
    (coordinator,) = c.snapshot()["coordinators"]
    assert sorted(coordinator["backends"]) == sorted(c.endpoints("w1", "w2")), coordinator
    pooled = _chat(c, "m")
    assert pooled.status_code == 200, pooled.text
    assert pooled.headers["x-sollol-route"] == "pool"
    assert pooled.json()["message"]["content"]


def _listening(host: Host) -> list[tuple[str, int]]:
    """Every TCP (v4 and v6) listening socket in a host's namespace: (address, port)."""
    out = subprocess.run(["ip", "netns", "exec", host.namespace, "ss", "-Hltn"],
                         capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        local = line.split()[3]
        address, port = local.rsplit(":", 1)
        found.append((address.strip("[]"), int(port)))
    return found


def _attacker_probe(c: Joined, address: str, port: int) -> str:
    """From the attacker's namespace: what a plain connect, an rpc HELLO and a TLS handshake
    (no certificate, then a certificate of another CA) to address:port get."""
    script = Path(__file__).with_name("join_attacker.py")
    out = subprocess.run(["ip", "netns", "exec", c.attacker.namespace, sys.executable, script,
                          "probe", address, str(port), str(c.foreign_cert), str(c.foreign_key)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


def test_the_attacker_reaches_no_worker_port(cluster: Joined) -> None:
    c = cluster
    for name in ("w1", "w2", "w3"):
        host = c.net.hosts[name]
        ports = _listening(host)
        # the rpc-server and the Ollama node listen on loopback only; the tunnel on the LAN
        lan = [(a, p) for a, p in ports if a not in ("127.0.0.1", "::1")]
        assert [p for _, p in lan] == [c.tunnel_port], (name, ports)
        for _address, port in ports:
            result = _attacker_probe(c, host.address, port)
            if port == c.tunnel_port:
                # TCP connects, but nothing without the gateway's certificate gets through
                assert result == "tls-refused", (name, port, result)
            else:
                assert result == "refused", (name, port, result)


def test_a_wrong_or_revoked_token_is_refused_and_nothing_of_it_joins(cluster: Joined) -> None:
    c = cluster
    attacker = c.attacker
    wrong = f"sollol-join-{c.token_id}.{'A' * 43}.{c.pin}"  # a real id, a wrong secret
    done = c.join_once(attacker, "intruder", wrong)
    assert done.returncode != 0
    assert "refused" in done.stderr.lower() and "token" in done.stderr.lower(), done.stderr
    revoked = c.new_token(note="revoked at once")
    c.admin("DELETE", f"/sollol/cluster/tokens/{c.token_id_of(revoked)}")
    done = c.join_once(attacker, "intruder2", revoked)
    assert done.returncode != 0 and "revoked" in done.stderr.lower(), done.stderr
    log = c.gateway_log()
    assert f"from {attacker.address} refused" in log, log[-3000:]
    assert c.token.split(".")[1] not in log and wrong.split(".")[1] not in log
    names = {Joined._member(n) for n in c.nodes()}
    assert "intruder" not in names and "intruder2" not in names


def test_a_captured_join_replayed_from_the_attacker_is_refused(cluster: Joined) -> None:
    c = cluster
    body = c.captured_join("replay-victim")  # a valid join as a worker sends it, sent once
    try:
        replay = _attacker_post(c, "/sollol/cluster/join", body)
        assert replay["status"] == 401, replay
        assert "nonce" in replay["body"].lower(), replay
    finally:
        c.admin("DELETE", "/sollol/cluster/members/replay-victim")


def _attacker_post(c: Joined, path: str, body: bytes,
                   headers: dict[str, str] | None = None) -> dict[str, Any]:
    script = Path(__file__).with_name("join_attacker.py")
    out = subprocess.run(["ip", "netns", "exec", c.attacker.namespace, sys.executable, script,
                          "post", c.url + path, body.decode(), json.dumps(headers or {})],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def test_a_worker_that_leaves_is_gone_from_nodes_at_once(cluster: Joined) -> None:
    c = cluster
    proc = c.workers["w2"]
    started = time.monotonic()
    proc.popen.send_signal(signal.SIGTERM)
    c.until(lambda: "w2" not in c.rpc_members(c.nodes()), 30, "w2 to leave /sollol/nodes")
    gone = time.monotonic() - started
    assert proc.popen.wait(30) == 0, proc.log_text()[-3000:]
    exited = time.monotonic() - started
    c.figures.append({"case": "worker left (SIGTERM)", "gone_from_nodes_s": round(gone, 2),
                      "worker_exited_s": round(exited, 2)})
    # docs/cluster.md: its signed leave takes its backends out of the routes at once, not
    # after member_timeout (the bound leaves room for a busy machine, far below the timeout
    # path: member_timeout plus a sweep)
    assert gone < c.member_timeout, gone
    assert "cluster: w2 left" in c.gateway_log()
    # nothing of it is left on its host
    assert c.net.hosts["w2"].pids() == [], c.net.hosts["w2"].pids()
    c.start_worker("w2")
    c.until(lambda: "w2" in c.rpc_members(c.nodes()), 60, "w2 to join again")


def test_a_cut_link_and_a_killed_worker_rejoin_by_themselves(cluster: Joined) -> None:
    c = cluster
    w1 = c.net.hosts["w1"]
    started = time.monotonic()
    w1.cut()
    c.until(lambda: "w1" not in c.rpc_members(c.nodes()), c.member_timeout + 15,
            "w1 to leave after its link was cut")
    left = time.monotonic() - started
    w1.restore()
    c.until(lambda: "w1" in c.rpc_members(c.nodes()), 30, "w1 to come back by itself")
    back = time.monotonic() - started - left
    # no coordinator keeps the dead link: the next sharded request is answered
    reply = _chat(c, c.model)
    assert reply.status_code == 200, reply.text
    (coordinator,) = c.snapshot()["coordinators"]
    assert sorted(coordinator["backends"]) == sorted(c.endpoints("w1", "w2")), coordinator
    c.figures.append({"case": "w1 link cut", "left_s": round(left, 1), "back_s": round(back, 1)})
    # a worker killed (SIGKILL: no goodbye) and started again under its old state: back by itself
    proc = c.workers["w1"]
    proc.kill()
    c.start_worker("w1")
    c.until(lambda: "w1" in c.rpc_members(c.nodes()), 60, "w1 to rejoin after a kill")
    reply = _chat(c, c.model)
    assert reply.status_code == 200, reply.text


def test_a_restarted_gateway_gets_its_workers_back(cluster: Joined) -> None:
    c = cluster
    c.gateway.stop()
    started = time.monotonic()
    c.start_gateway()
    c.until(lambda: {"w1", "w2"} <= c.rpc_members(c.nodes())
            and "w3" in c.pool_members(c.nodes()), 60, "the workers back after a restart")
    c.figures.append({"case": "gateway restarted",
                      "workers_back_s": round(time.monotonic() - started, 1)})
    reply = _chat(c, c.model)
    assert reply.status_code == 200, reply.text
    assert _chat(c, "m").status_code == 200


def _flood_with_a_client(c: Joined, count: int, client_too: bool = True,
                         ) -> tuple[dict[str, int], list[tuple[int, float]]]:
    """`count` bad joins from the attacker (32 at a time) while a keyed client keeps asking the
    pool (unless not `client_too`); the attacker's status counts and the client's (status,
    seconds) per request."""
    script = Path(__file__).with_name("join_attacker.py")
    flood = subprocess.Popen(["ip", "netns", "exec", c.attacker.namespace, sys.executable, script,
                              "flood", c.url, str(count), "32"], stdout=subprocess.PIPE, text=True)
    results = []
    with httpx.Client(base_url=c.url, headers=c.auth, timeout=60, trust_env=False) as client:
        while client_too and (flood.poll() is None or len(results) < 20):
            started = time.monotonic()
            reply = _chat(c, "m", client)
            results.append((reply.status_code, time.monotonic() - started))
    out, _ = flood.communicate(timeout=120)
    return json.loads(out), results


def test_a_join_flood_does_not_hurt_a_keyed_client_and_stays_bounded(cluster: Joined) -> None:
    c = cluster
    start = rss_bytes(c.gateway.pid)
    counts, results = _flood_with_a_client(c, 600)
    for status, _ in results:
        assert status == 200, results
    assert sum(counts.values()) >= 600 and set(counts) <= {"401", "429", "400"}, counts
    assert counts.get("429", 0) > 0  # the per-address limit answers the flood
    # bounded: a second flood, twice as large, grows the gateway's memory no more than the same
    # time without a flood does (members' heartbeats and probes go on meanwhile)
    before = rss_bytes(c.gateway.pid)
    started = time.monotonic()
    more, _ = _flood_with_a_client(c, 1200, client_too=False)
    took = time.monotonic() - started
    after = rss_bytes(c.gateway.pid)
    assert sum(more.values()) >= 1200, more
    time.sleep(took)  # the control: as long again, no flood
    idle = rss_bytes(c.gateway.pid)
    c.figures.append({
        "case": "join flood (one attacker address, 32 at a time)", "bad_joins": counts,
        "client_requests": len(results), "client_ok": len(results),
        "client_slowest_s": round(max(s for _, s in results), 2),
        "gateway_rss_mib": {"start": round(start / 2**20, 1), "before": round(before / 2**20, 1),
                            "after_1200": round(after / 2**20, 1),
                            "idle_as_long": round(idle / 2**20, 1)}, "flood_s": round(took, 1)})
    assert (after - before) - (idle - after) < 16 * 2**20, (start, before, after, idle)
