"""Joined machines in a real gateway: live in /sollol/nodes through their tunnel, gone when they
leave or go silent, back with a signed heartbeat; approvals; the per-address failure limit."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sollol_plugins.cluster_join import running
from sollol_plugins.cluster_join.tunnel import RPC_SERVICE, TlsIdentity, TunnelServer, pool_service

from sollol.client.loop_thread import LoopThread
from sollol.core.processes import free_port

GIB = 1 << 30


def sollol(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sollol", *args], capture_output=True,
                          text=True, env=dict(os.environ), timeout=120)


def nodes(client: httpx.Client) -> dict[str, dict[str, Any]]:
    return {n["id"]: n for n in client.get("/sollol/nodes").json()["nodes"]}


def post_from(source: str, port: int, path: str, body: dict[str, Any]) -> int:
    """POST JSON to the gateway on 127.0.0.1 from another loopback address; the status."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30,
                                            source_address=(source, 0))
    try:
        connection.request("POST", path, json.dumps(body),
                           {"content-type": "application/json"})
        return connection.getresponse().status
    finally:
        connection.close()


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    with LoopThread("test-worker-tunnel") as thread:
        yield thread


def serve_tunnel(loop: LoopThread, machine: Any, folder: Path, port: int,
                 services: dict[str, int]) -> TunnelServer:
    """The worker's end of the tunnel, with the certificate the gateway issued it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "member.key").write_bytes(machine.key)
    (folder / "member.pem").write_text(machine.certificate)
    (folder / "ca.pem").write_text(machine.answer["ca_certificate"])
    identity = TlsIdentity(folder / "member.pem", folder / "member.key", folder / "ca.pem")
    server = TunnelServer(identity, machine.answer["gateway_fingerprint"], services,
                          host="127.0.0.1", port=port)
    return loop.run(server.start())


def test_a_joined_pool_node_serves_through_its_tunnel_and_leaves_live(
    join_gateway: Callable[..., Any], admin: Callable[..., Any], worker: Any,
    emulator: Callable[..., Any], loop: LoopThread, poll: Callable[..., Any], tmp_path: Path,
) -> None:
    node = emulator(models=["tiny:1b"])
    gateway = join_gateway(health_interval=0.5)
    client = admin(gateway)
    token = client.post("/sollol/cluster/tokens", json={"note": "rack 1"}).json()["token"]
    machine = worker(gateway.url, "w1")
    port = free_port()
    reply = machine.join(token, services={"pool": [{"kind": "ollama", "port": node.port}]},
                         tunnel_port=port)
    assert reply.status_code == 200 and reply.json()["status"] == "member"
    assert "w1" not in nodes(client)  # not before its tunnel is up: its first heartbeat says so
    assert client.get("/sollol/cluster/members").json()["members"][0]["state"] == "joining"
    server = serve_tunnel(loop, machine, tmp_path / "w1", port, {pool_service(0): node.port})
    try:
        assert machine.message("heartbeat").status_code == 200
        joined = poll(lambda: nodes(client).get("w1", {}).get("health") == "healthy"
                      and nodes(client)["w1"], "w1 healthy through its tunnel")
        assert joined["member"] == "w1" and joined["source"] == "join"
        assert joined["address"].startswith("127.0.0.1:")
        assert joined["address"] != node.address  # the gateway's tunnel endpoint, not the node
        assert joined["memory_total"] == 24 * GIB and joined["memory_free"] == 20 * GIB
        beat = machine.message("heartbeat", {"devices": [
            {"name": "CUDA0", "backend": "cuda", "memory_total": 24 * GIB,
             "memory_free": 5 * GIB}]})
        assert beat.status_code == 200
        assert nodes(client)["w1"]["memory_free"] == 5 * GIB  # the live number, not declared
        chat = client.post("/api/chat", json={"model": "tiny:1b", "stream": False,
                                              "messages": [{"role": "user", "content": "hi"}]})
        assert chat.status_code == 200, chat.text
        assert chat.headers["x-sollol-backend"] == "w1"
        listed = sollol("nodes", "--gateway", gateway.url)
        assert listed.returncode == 0 and any(
            line.split()[:1] == ["w1"] and "healthy" in line and "5.0G/24.0G free" in line
            for line in listed.stdout.splitlines()), listed.stdout
        status = sollol("status", "--json", "--gateway", gateway.url)
        assert status.returncode == 0, status.stderr
        shown = {n["id"]: n for n in json.loads(status.stdout)["nodes"]}
        assert shown["w1"]["member"] == "w1"
        (member,) = client.get("/sollol/cluster/members").json()["members"]
        assert member["name"] == "w1" and member["state"] == "member"
        assert member["backends"] == {pool_service(0): joined["address"]}
        assert machine.message("leave").status_code == 200
        assert "w1" not in nodes(client)  # gone at once, not at the next discovery round
        assert client.get("/sollol/cluster/members").json()["members"] == []
    finally:
        loop.run(server.stop())


def test_a_silent_member_times_out_and_a_signed_heartbeat_brings_it_back(
    join_gateway: Callable[..., Any], admin: Callable[..., Any], worker: Any,
    poll: Callable[..., Any],
) -> None:
    gateway = join_gateway(member_timeout=1.0)
    client = admin(gateway)
    token = client.post("/sollol/cluster/tokens", json={}).json()["token"]
    machine = worker(gateway.url, "w2")
    services = {"pool": [{"kind": "ollama", "port": 11434}]}
    assert machine.join(token, services=services).status_code == 200
    assert machine.message("heartbeat").status_code == 200
    assert "w2" in nodes(client)
    poll(lambda: "w2" not in nodes(client), "the silent member to leave /sollol/nodes")
    (member,) = client.get("/sollol/cluster/members").json()["members"]
    assert member["state"] == "offline"
    assert machine.message("heartbeat", {"services": services}).status_code == 200
    assert "w2" in nodes(client)  # re-admitted by its certificate, no token
    assert client.get("/sollol/cluster/members").json()["members"][0]["state"] == "member"


def test_approve_policy_keeps_a_machine_pending_until_an_admin_approves(
    join_gateway: Callable[..., Any], worker: Any, admin: Callable[..., Any],
) -> None:
    gateway = join_gateway(join_policy="approve")
    client = admin(gateway)
    created = sollol("cluster", "token", "create", "--note", "lab", "--gateway", gateway.url)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("sollol-join-") and "sollol join" in created.stderr
    machine = worker(gateway.url, "w3")
    services = {"pool": [{"kind": "ollama", "port": 11434}]}
    reply = machine.join(token, services=services)
    assert reply.status_code == 202 and reply.json()["status"] == "pending"
    assert "certificate" not in reply.json()
    assert machine.message("status").status_code == 202
    assert "w3" not in nodes(client)
    assert client.get("/sollol/cluster/members").json()["members"] == []
    pending = sollol("cluster", "pending", "--gateway", gateway.url)
    assert pending.returncode == 0 and pending.stdout.startswith("w3 ")
    approved = sollol("cluster", "approve", "w3", "--gateway", gateway.url)
    assert approved.returncode == 0, approved.stderr
    status = machine.message("status")
    assert status.status_code == 200 and status.json()["status"] == "member"
    machine.take(token, status.json())  # the answer proves the token's gateway sent it
    assert machine.certificate is not None
    assert machine.message("heartbeat").status_code == 200
    assert "w3" in nodes(client) and nodes(client)["w3"]["member"] == "w3"
    listed = sollol("cluster", "members", "--gateway", gateway.url)
    assert listed.returncode == 0 and listed.stdout.startswith("w3 ") and "member" in listed.stdout
    tokens = sollol("cluster", "token", "list", "--gateway", gateway.url)
    token_id = token.split(".")[0].removeprefix("sollol-join-")
    assert token_id in tokens.stdout and "uses 1" in tokens.stdout and token not in tokens.stdout
    assert sollol("cluster", "token", "revoke", token_id, "--gateway", gateway.url).returncode == 0
    assert worker(gateway.url, "w4").join(token).status_code == 401
    removed = sollol("cluster", "remove", "w3", "--gateway", gateway.url)
    assert removed.returncode == 0 and "w3" not in nodes(client)
    unknown = sollol("cluster", "approve", "nobody", "--gateway", gateway.url)
    assert unknown.returncode == 1 and "not waiting for approval" in unknown.stderr


def test_failures_per_address_are_limited_and_a_flood_stays_bounded(
    join_gateway: Callable[..., Any], worker: Any, admin: Callable[..., Any],
) -> None:
    gateway = join_gateway(join_failure_limit=5)
    client = admin(gateway)
    token = client.post("/sollol/cluster/tokens", json={}).json()["token"]
    service = running.of_cluster(gateway.gateway.cluster)
    assert service is not None
    service.limiter.max_addresses = 100  # the bound (1024 by default), small enough to fill
    bad = {"token_id": "0badc0de", "nonce": "bm9uY2U=", "proof": "eA=="}
    attacker = worker(gateway.url, "x")
    for _ in range(5):
        assert attacker.post_join(bad).status_code == 401
    limited = attacker.post_join(bad)
    assert limited.status_code == 429 and "too many failed attempts" in limited.json()["error"]
    with attacker.client() as http:  # that address gets nothing now, not even a nonce
        assert http.get("/sollol/cluster/challenge").status_code == 429
    for i in range(300):  # hundreds of machines failing, each from an address of its own
        source = f"127.1.{i // 250}.{i % 250 + 1}"
        assert post_from(source, gateway.port, "/sollol/cluster/join", bad) == 401
    assert len(service.limiter) == 100
    assert len(service.nonces) <= service.nonces.limit
    assert client.get("/sollol/cluster/members").json()["members"] == []
    honest = worker(gateway.url, "w5", source="127.2.0.1")
    assert honest.join(token).status_code == 200  # the flood did not lock others out


@pytest.mark.llamacpp
def test_a_joined_rpc_server_is_probed_through_its_tunnel(
    join_gateway: Callable[..., Any], admin: Callable[..., Any], worker: Any,
    rpc_servers: Callable[..., Any], llama_binaries: Any, loop: LoopThread,
    poll: Callable[..., Any], tmp_path: Path,
) -> None:
    ((address, _proc),) = rpc_servers(1)
    rpc_port = int(address.rsplit(":", 1)[1])
    gateway = join_gateway(model_sharding_enabled=True, rpc_discover_loopback=False,
                           rpc_state_dir=str(tmp_path / "sharding"), health_interval=0.5,
                           llama_cpp_dir=str(llama_binaries.llama_server.parent))
    client = admin(gateway)
    token = client.post("/sollol/cluster/tokens", json={}).json()["token"]
    machine = worker(gateway.url, "w6")
    port = free_port()
    assert machine.join(token, services={"rpc": {"port": rpc_port}},
                        tunnel_port=port).status_code == 200
    server = serve_tunnel(loop, machine, tmp_path / "w6", port, {RPC_SERVICE: rpc_port})
    try:
        assert machine.message("heartbeat").status_code == 200
        def joined() -> dict[str, Any] | None:
            shards = client.get("/sollol/routes/sharding").json()["backends"]
            found = [s for s in shards if s.get("member") == "w6" and s["healthy"]]
            return found[0] if found else None

        shard = poll(joined, "the joined rpc-server healthy through its tunnel")
        assert shard["id"] == "rpc:w6" and shard["address"] != address
        assert shard["memory_total"] and shard["version"]  # llama.cpp's RPC answers, tunnelled
        status = sollol("status", "--json", "--gateway", gateway.url)
        servers = json.loads(status.stdout)["rpc_servers"]
        assert [s["member"] for s in servers] == ["w6"]
        assert machine.message("leave").status_code == 200
        shards = client.get("/sollol/routes/sharding").json()["backends"]
        assert not [s for s in shards if s.get("member") == "w6"]
    finally:
        loop.run(server.stop())


def test_memory_fit_places_by_the_free_memory_a_joined_machine_reports(
    join_gateway: Callable[..., Any], admin: Callable[..., Any], worker: Any,
    emulator: Callable[..., Any], loop: LoopThread, poll: Callable[..., Any], tmp_path: Path,
) -> None:
    from sollol.testing.emulator import EmulatedModel

    node = emulator(models=["m", EmulatedModel("big", loaded=False)], gpu_memory=0)
    gateway = join_gateway(plugins=["ollama_pool", "policies", "cluster_join"],
                           routing_policy="memory-fit", task_distribution_enabled=True,
                           model_sharding_enabled=True, health_interval=0.2)
    client = admin(gateway)
    token = client.post("/sollol/cluster/tokens", json={}).json()["token"]
    machine = worker(gateway.url, "gpu1")
    port = free_port()
    roomy = [{"name": "CUDA0", "backend": "cuda", "memory_total": 8 * GIB,
              "memory_free": 6 * GIB}]
    assert machine.join(token, services={"pool": [{"kind": "ollama", "port": node.port}]},
                        tunnel_port=port, devices=roomy).status_code == 200
    server = serve_tunnel(loop, machine, tmp_path / "gpu1", port, {pool_service(0): node.port})
    try:
        assert machine.message("heartbeat").status_code == 200
        poll(lambda: nodes(client).get("gpu1", {}).get("health") == "healthy", "gpu1 healthy")
        decision = client.get("/sollol/route", params={"model": "big"}).json()
        assert decision["route"] == "pool", decision
        assert "node gpu1 has 6.0 GiB free" in decision["reason"]
        assert decision["numbers"]["pool_nodes"]["gpu1"] == {
            "free_bytes": 6 * GIB, "total_bytes": 8 * GIB, "vram_used_bytes": 0,
            "loaded": False, "fits": True}
        full = [{**roomy[0], "memory_free": GIB // 2}]  # something else took the GPU
        assert machine.message("heartbeat", {"devices": full}).status_code == 200
        # what memory-fit reads now: the pool route's state has the new reading
        state = gateway.gateway.cluster.routes["pool"].state()
        (joined,) = [b for b in state.backends if b.backend.id == "gpu1"]
        assert (joined.memory_total, joined.memory_free) == (8 * GIB, GIB // 2)
        assert nodes(client)["gpu1"]["memory_free"] == GIB // 2
    finally:
        loop.run(server.stop())


def test_tokens_members_and_seqs_survive_a_gateway_restart(
    join_gateway: Callable[..., Any], admin: Callable[..., Any], worker: Any,
) -> None:
    first = join_gateway()
    client = admin(first)
    token = client.post("/sollol/cluster/tokens", json={"note": "kept"}).json()["token"]
    machine = worker(first.url, "w7")
    services = {"pool": [{"kind": "ollama", "port": 11434}]}
    assert machine.join(token, services=services).status_code == 200
    captured = machine.signed("heartbeat", {"services": services})
    assert machine.send("heartbeat", *captured).status_code == 200
    first.stop()

    second = join_gateway()  # the same cluster_state_dir
    client = admin(second)
    machine.url = second.url
    (member,) = client.get("/sollol/cluster/members").json()["members"]
    assert (member["name"], member["state"]) == ("w7", "offline")  # until it says it is alive
    assert "w7" not in nodes(client)
    replay = machine.send("heartbeat", *captured)  # recorded before the restart
    assert replay.status_code == 401 and "replay" in replay.json()["error"]
    assert machine.message("heartbeat", {"services": services}).status_code == 200
    assert "w7" in nodes(client)
    (listed,) = client.get("/sollol/cluster/tokens").json()["tokens"]
    assert (listed["note"], listed["uses"], listed["state"]) == ("kept", 1, "active")
    assert worker(second.url, "w8").join(token).status_code == 200  # the same CA and token


def test_a_machine_joining_again_gets_new_links_and_the_routes_follow(
    join_gateway: Callable[..., Any], admin: Callable[..., Any], worker: Any,
) -> None:
    gateway = join_gateway()
    client = admin(gateway)
    token = client.post("/sollol/cluster/tokens", json={}).json()["token"]
    machine = worker(gateway.url, "w9")
    services = {"pool": [{"kind": "ollama", "port": 11434}]}

    def links() -> str:
        (member,) = client.get("/sollol/cluster/members").json()["members"]
        return member["backends"][pool_service(0)]

    assert machine.join(token, services=services).status_code == 200
    assert machine.message("heartbeat").status_code == 200
    first_pin, first_link = machine.pin, links()
    assert nodes(client)["w9"]["address"] == first_link
    assert machine.join(token, services=services).status_code == 200  # e.g. its state was lost
    assert machine.pin != first_pin and links() != first_link  # a new certificate, new links
    assert "w9" not in nodes(client)  # the old links left; the new ones wait for its tunnel
    assert machine.message("heartbeat").status_code == 200
    assert nodes(client)["w9"]["address"] == links()  # not the closed endpoint
