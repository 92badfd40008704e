"""Shard failures with real processes: mid-request, while idle, and orphans of a dead gateway."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from sollol_plugins.llamacpp_rpc import procs

from sollol.cli import build_cli
from sollol.models import RouteRequest
from sollol.routes import Outcome

pytestmark = [pytest.mark.llamacpp, pytest.mark.slow]
PROMPT = [{"role": "user", "content": "write a long story about memory and layers"}]


async def chat(base_url: str, tokens: int = 16) -> str:
    async with httpx.AsyncClient(timeout=120) as client:
        response = await client.post(base_url + "/v1/chat/completions", json={
            "messages": PROMPT, "max_tokens": tokens, "temperature": 0})
    response.raise_for_status()
    return response.json()["choices"][0]["message"]["content"]


async def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("relay", [False, True], ids=["direct", "relayed"])
async def test_killing_a_shard_mid_request_fails_it_and_restarts_on_survivors(
    rpc_servers, sharding_route, tiny_model: Path, relay: bool,
) -> None:
    servers = rpc_servers(3)
    route = await sharding_route([a for a, _ in servers], rpc_placement="all",
                                 rpc_load_relay=relay)
    model = str(tiny_model)
    lease = await route.acquire(RouteRequest(model=model))
    first = route.supervisor.coordinators[model]
    victim, victim_proc = servers[1]
    error: Exception | None = None
    done = False
    try:
        body = {"messages": PROMPT, "max_tokens": 100000, "temperature": 0, "stream": True}
        async with httpx.AsyncClient(timeout=httpx.Timeout(60, read=30)) as client, \
                client.stream("POST", lease.base_url + "/v1/chat/completions",
                              json=body) as response:
            chunks = 0
            async for line in response.aiter_lines():
                chunks += 1
                if chunks == 3:
                    victim_proc.kill()
                done = done or line.strip() == "data: [DONE]"
    except httpx.HTTPError as exc:  # the connection drops: never a hang (the read timeout
        error = exc                 # above would fail the test instead)
    lease.release(Outcome(ok=False, error=str(error), first_byte_sent=True))
    assert error is not None or not done, "the stream should not complete normally"

    await wait_for(lambda: first.error is not None)
    # Either the supervisor saw the dropped connection first, or llama-server's abort.
    assert "rpc-server" in first.error

    lease = await route.acquire(RouteRequest(model=model))
    try:
        second = route.supervisor.coordinators[model]
        assert second is not first and second.proc.pid != first.proc.pid
        assert second.plan.addresses == [a for a, _ in servers if a != victim]
        assert await chat(lease.base_url)
    finally:
        lease.release(Outcome(ok=True))
    snap = route.snapshot()
    assert any(victim in w for w in snap["warnings"])
    down = {b["address"]: b for b in snap["backends"]}[victim]
    assert not down["healthy"]


@pytest.mark.parametrize("relay", [False, True], ids=["direct", "relayed"])
async def test_a_shard_killed_while_idle_is_noticed_without_probing_it(
    rpc_servers, sharding_route, tiny_model: Path, relay: bool,
) -> None:
    servers = rpc_servers(2)
    route = await sharding_route([a for a, _ in servers], rpc_placement="all",
                                 rpc_load_relay=relay)
    model = str(tiny_model)
    lease = await route.acquire(RouteRequest(model=model))
    await chat(lease.base_url, 4)
    lease.release(Outcome(ok=True))
    first = route.supervisor.coordinators[model]

    # llama-server's /health would still say ok; the supervisor reads the dropped connection.
    servers[0][1].kill()
    await wait_for(lambda: route.supervisor.coordinators.get(model) not in (None, first))
    lease = await route.acquire(RouteRequest(model=model))
    try:
        assert route.supervisor.coordinators[model].plan.addresses == [servers[1][0]]
        assert await chat(lease.base_url, 4)  # served, no error: restarted before it was asked
    finally:
        lease.release(Outcome(ok=True))
    assert not first.alive()


@pytest.mark.parametrize("relay", [False, True], ids=["direct", "relayed"])
async def test_stopping_the_route_leaves_no_process(
    rpc_servers, sharding_route, tiny_model: Path, relay: bool,
) -> None:
    import threading

    route = await sharding_route([a for a, _ in rpc_servers(1)], rpc_load_relay=relay)
    lease = await route.acquire(RouteRequest(model=str(tiny_model)))
    lease.release(Outcome(ok=True))
    coord = route.supervisor.coordinators[str(tiny_model)]
    pid_files = list(route.supervisor.pid_dir.glob("*.json"))
    assert [p.stem for p in pid_files] == [str(coord.proc.pid)]
    await route.stop()
    assert coord.proc.poll() is not None
    assert not list(route.supervisor.pid_dir.glob("*.json"))
    assert (coord.relays is not None) == relay
    assert not [t for t in threading.enumerate() if t.name.startswith("sollol-relay")]


ORPHAN_MAKER = """
import json, subprocess, sys, time
from pathlib import Path
from sollol_plugins.llamacpp_rpc import procs
folder, binary, model = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
proc = procs.spawn([binary, "-m", model, "--port", sys.argv[4], "--host", "127.0.0.1"],
                   folder / "orphan.log")
procs.write_pid_file(folder / "coordinators", proc, {"model": "orphan"})
print(proc.pid, flush=True)
time.sleep(600)
"""


def test_a_killed_gateway_leaves_no_coordinator(
    tmp_path: Path, llama_binaries, tiny_model: Path,
) -> None:
    """Parent-death signal: SIGKILL the "gateway"; its coordinator dies with it."""
    port = procs.free_port()
    gateway = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_MAKER, str(tmp_path), str(llama_binaries.llama_server),
         str(tiny_model), str(port)], stdout=subprocess.PIPE, start_new_session=True)
    try:
        child = int(gateway.stdout.readline())
        assert procs.read_pid_files(tmp_path / "coordinators")
    finally:
        os.killpg(gateway.pid, signal.SIGKILL)
        gateway.wait()
    deadline = time.monotonic() + 30
    while procs.alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not procs.alive(child)
    assert procs.reap_orphans(tmp_path / "coordinators") == []  # gone already; file removed
    assert not list((tmp_path / "coordinators").glob("*.json"))


def test_reap_orphans_stops_a_coordinator_whose_gateway_is_gone(
    tmp_path: Path, llama_binaries, tiny_model: Path,
) -> None:
    """The pid-file path, for a coordinator that survived its gateway some other way."""
    folder = tmp_path / "coordinators"
    proc = subprocess.Popen(
        [str(llama_binaries.llama_server), "-m", str(tiny_model), "--host", "127.0.0.1",
         "--port", str(procs.free_port())],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        path = procs.write_pid_file(folder, proc, {"model": "m"})
        data = json.loads(path.read_text())
        path.write_text(json.dumps({**data, "owner_pid": 2**22 + 1}))  # a gateway that is gone
        assert procs.reap_orphans(folder) == [proc.pid]
        assert proc.wait(10) is not None
        assert not path.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_reap_orphans_spares_a_live_gateways_coordinator(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            start_new_session=True)
    try:
        path = procs.write_pid_file(tmp_path, proc, {"model": "m"})  # owner: this live process
        assert procs.reap_orphans(tmp_path) == []
        assert proc.poll() is None and path.exists()
        data = json.loads(path.read_text())
        path.write_text(json.dumps({**data, "start_ticks": data["start_ticks"] + 1}))
        assert procs.reap_orphans(tmp_path) == []  # a recycled pid is never killed
        assert proc.poll() is None and not path.exists()
    finally:
        proc.kill()
        proc.wait()


async def test_a_coordinator_too_slow_to_start_is_stopped_and_frees_its_shards(
    rpc_servers, sharding_route, tiny_model: Path,
) -> None:
    """Past rpc_startup_timeout the llama-server is still running: it must be stopped, or it
    stays attached to rpc-servers we would then probe and hand to another coordinator."""
    from sollol.errors import NoRouteAvailable

    ((address, rpc_proc),) = rpc_servers(1)
    route = await sharding_route([address], rpc_startup_timeout=0.01)
    model = str(tiny_model)
    with pytest.raises(NoRouteAvailable, match="did not become ready within"):
        await route.acquire(RouteRequest(model=model))
    coord = route.supervisor.coordinators[model]
    assert coord.proc.poll() is not None, "the slow llama-server was left running"
    assert not list(route.supervisor.pid_dir.glob("*.json"))
    shard = route.shards.shards[address]
    assert shard.healthy and shard.owner is None and rpc_proc.alive()


@pytest.mark.llamacpp
async def test_with_every_rpc_server_down_route_says_the_request_falls_back(
    pool_gateway, emulator, tiny_model: Path, llama_binaries, tmp_path: Path,
) -> None:
    """Not "0.00 GiB free ... would wait up to 120s ... 429" (issue 28): a request fails at
    once on the sharding route and goes on to its fallback, and `sollol route` says so."""
    from sollol.core.processes import free_port

    node = emulator(models=["m"])
    model = str(tiny_model)
    gw = pool_gateway(node.address, model_sharding_enabled=True,
                      rpc_backends=[f"127.0.0.1:{free_port()}"],  # nothing listens there
                      rpc_discover_loopback=False,
                      llama_cpp_dir=str(llama_binaries.llama_server.parent),
                      rpc_state_dir=str(tmp_path / "sharding"), model_fallbacks={model: ["m"]})
    answer = httpx.get(gw.url + "/sollol/route", params={"model": model}).json()
    assert answer.get("route") == "pool" and answer.get("fallback") == "m", answer
    (step,) = answer["tried"]
    assert step["status"] == 503 and "sharding route" in step["error"], step
    assert "would wait" not in json.dumps(answer)
    reply = httpx.post(gw.url + "/api/chat", json={
        "model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False},
        timeout=60)
    assert reply.status_code == 200 and reply.headers["x-sollol-route"] == "pool"


@pytest.mark.llamacpp
async def test_with_sharding_alone_and_every_rpc_server_down_route_says_503_at_once(
    sharding_gateway, tiny_model: Path, tmp_path: Path,
) -> None:
    """Sharding is the only route: the decision stands, but the route says a request fails
    at once, so its fallback is explained next; the last one's error is the request's."""
    from sollol.core.processes import free_port
    from sollol.testing.tiny_models import make_tiny_model

    model, other = str(tiny_model), str(make_tiny_model(tmp_path / "other.gguf", seed=7))
    gw = sharding_gateway([f"127.0.0.1:{free_port()}"], rpc_discover_loopback=False,
                          model_fallbacks={model: [other]})
    refused = httpx.get(gw.url + "/sollol/route", params={"model": model})
    assert refused.status_code == 503, refused.text
    error = refused.json()["error"]
    assert "would wait" not in error and f"after trying {model}: the sharding route fails " \
        "at once" in error
    reply = httpx.post(gw.url + "/api/chat", json={
        "model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False},
        timeout=60)
    assert reply.status_code == 503
    shown = CliRunner().invoke(build_cli(), ["route", other, "--gateway", gw.url])
    assert shown.exit_code == 1 and "no route (503)" in shown.output
    assert "a request fails at once (503)" in shown.output or "fails at once" in shown.output
