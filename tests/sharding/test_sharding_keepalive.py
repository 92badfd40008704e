"""How long a sharded model stays loaded: Ollama's `keep_alive`, `sollol shard unload`, and an
idle coordinator moving back to its preferred rpc-servers when they return (issue 28)."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from sollol.cli import build_cli
from sollol.core.units import keep_alive_seconds
from sollol.models import RouteRequest
from sollol.routes import Outcome

CHAT = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(("value", "seconds"), [
    (None, None), (0, 0.0), ("0", 0.0), ("0s", 0.0), (30, 30.0), (2.5, 2.5), ("5m", 300.0),
    ("1h30m", 5400.0), ("500ms", 0.5), ("-1", math.inf), (-1, math.inf), ("-5m", math.inf),
])
def test_keep_alive_reads_as_ollama_reads_it(value, seconds) -> None:
    assert keep_alive_seconds(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5x", "", True, [], "nan", "1h-5m"])
def test_a_bad_keep_alive_is_refused(value) -> None:
    with pytest.raises(ValueError, match="keep_alive"):
        keep_alive_seconds(value)


def running(gw) -> list[dict]:
    return httpx.get(gw.url + "/api/ps").json()["models"]


def wait_until(condition, what: str, limit: float = 60.0) -> None:
    """Poll (a bound on a hang, not a speed assertion)."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


@pytest.mark.llamacpp
def test_keep_alive_zero_unloads_a_sharded_model_after_its_request(
    rpc_servers, sharding_gateway, tiny_model: Path,
) -> None:
    (address, _proc), = rpc_servers(1)
    gw = sharding_gateway([address], gguf_dirs=[str(tiny_model.parent)])
    model = tiny_model.stem
    reply = httpx.post(gw.url + "/api/chat", timeout=120, json={
        "model": model, "messages": CHAT, "stream": False, "keep_alive": 0,
        "options": {"num_predict": 2}})
    assert reply.status_code == 200, reply.text
    wait_until(lambda: not running(gw), "the coordinator stopped after its request")
    state = httpx.get(gw.url + "/sollol/routes/sharding").json()
    assert all(b["attached_to"] is None for b in state["backends"])  # the rpc-server is free


@pytest.mark.llamacpp
def test_keep_alive_sets_the_idle_time_and_shard_unload_stops_it(
    rpc_servers, sharding_gateway, tiny_model: Path,
) -> None:
    (address, _proc), = rpc_servers(1)
    # a model name, not a path: /api/ps lists models by name
    gw = sharding_gateway([address], rpc_idle_timeout=60, gguf_dirs=[str(tiny_model.parent)])
    model = tiny_model.stem
    reply = httpx.post(gw.url + "/api/generate", timeout=120, json={
        "model": model, "prompt": "hi", "stream": False, "keep_alive": "2h",
        "options": {"num_predict": 2}})
    assert reply.status_code == 200, reply.text
    (entry,) = running(gw)
    expires = datetime.fromisoformat(entry["expires_at"].replace("Z", "+00:00")).timestamp()
    assert 7000 < expires - time.time() <= 7200  # 2h from its last request, not 60 s
    assert entry["details"]["sharded_over"] == [address]

    # a request that says nothing goes back to rpc_idle_timeout, as Ollama goes back to its
    # default: each request sets it
    httpx.post(gw.url + "/api/generate", timeout=120, json={
        "model": model, "prompt": "hi", "stream": False, "options": {"num_predict": 2}})
    (entry,) = running(gw)
    expires = datetime.fromisoformat(entry["expires_at"].replace("Z", "+00:00")).timestamp()
    assert 0 < expires - time.time() <= 60

    done = CliRunner().invoke(build_cli(), ["shard", "unload", model, "--gateway", gw.url])
    assert done.exit_code == 0, done.output
    assert f"unloaded {model}" in done.output and address in done.output
    wait_until(lambda: not running(gw), "the coordinator stopped")
    # unloading what is not loaded answers as Ollama does and starts nothing
    again = httpx.post(gw.url + "/api/generate", json={"model": model, "keep_alive": 0})
    assert again.json()["done_reason"] == "unload" and not running(gw)
    assert httpx.get(gw.url + "/sollol/routes/sharding").json()["coordinators"] == []
    said = CliRunner().invoke(build_cli(), ["shard", "unload", model, "--gateway", gw.url])
    assert said.exit_code == 0 and "was not loaded on the sharding route" in said.output


@pytest.mark.llamacpp
async def test_an_idle_coordinator_moves_back_when_its_rpc_server_returns(
    rpc_servers, sharding_route, tiny_model: Path, processes, llama_binaries,
) -> None:
    """Placed on the first rpc-server, restarted on the second when the first died: once the
    first answers again, the idle coordinator goes back to it (not after rpc_idle_timeout)."""
    from sollol.core.processes import wait_port

    servers = rpc_servers(2)
    first, second = (a for a, _ in servers)
    route = await sharding_route([first, second], health_interval=0.2)
    model = str(tiny_model)
    lease = await route.acquire(RouteRequest(model=model))
    lease.release(Outcome(ok=True))
    placed = route.supervisor.coordinators[model].plan
    assert placed.addresses == [first], (placed.reason, [
        (s.address, s.latency_s) for s in route.shards.shards.values()])

    servers[0][1].kill()
    await until(lambda: _on(route, model) == [second])
    port = int(first.rsplit(":", 1)[1])
    back = processes.start(f"rpc-server-{port}-again", [
        llama_binaries.rpc_server, "-H", "127.0.0.1", "-p", str(port), "-t", "1"])
    wait_port("127.0.0.1", port, process=back, timeout=30)
    await until(lambda: _on(route, model) == [first])
    lease = await route.acquire(RouteRequest(model=model))
    try:
        from test_sharding_route import chat

        assert await chat(lease.base_url, 4)
    finally:
        lease.release(Outcome(ok=True))
    assert route.shards.shards[second].owner is None  # the survivor is free again


def _on(route, model: str) -> list[str] | None:
    coord = route.supervisor.coordinators.get(model)
    return coord.plan.addresses if coord is not None and coord.state == "ready" else None


async def until(condition, limit: float = 90.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)
