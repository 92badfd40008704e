"""The sharding route with real rpc-servers and llama-server coordinators on loopback."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from sollol_plugins.llamacpp_rpc.rpc_probe import ProbeError, probe

from sollol.errors import NoRouteAvailable
from sollol.models import RouteRequest
from sollol.routes import Outcome

pytestmark = [pytest.mark.llamacpp, pytest.mark.slow]
PROMPT = [{"role": "user", "content": "tell me about the shard layer"}]


async def chat(base_url: str, tokens: int = 24) -> str:
    async with httpx.AsyncClient(timeout=120) as client:
        response = await client.post(base_url + "/v1/chat/completions", json={
            "messages": PROMPT, "max_tokens": tokens, "temperature": 0, "seed": 1})
    response.raise_for_status()
    return response.json()["choices"][0]["message"]["content"]


async def test_three_shards_layer_report_and_identical_output(
    rpc_servers, sharding_route, tiny_model: Path, llama_server,
) -> None:
    servers = rpc_servers(3)
    addresses = [a for a, _ in servers]
    route = await sharding_route(addresses, rpc_placement="all")  # a layer on every shard
    lease = await route.acquire(RouteRequest(model=str(tiny_model)))
    try:
        assert lease.api == "openai" and lease.route == "sharding"
        sharded = await chat(lease.base_url)
    finally:
        lease.release(Outcome(ok=True))

    snap = route.snapshot()
    (coord,) = snap["coordinators"]
    report = coord["layers"]
    assert [b["address"] for b in report["backends"]] == addresses
    assert all(b["layers"] > 0 and b["weights_mib"] > 0 for b in report["backends"])
    assert sum(b["layers"] for b in report["backends"]) == report["block_count"] == 8
    assert report["offloaded"] == "9/9"

    direct_url, _proc = await asyncio.to_thread(llama_server, tiny_model)
    assert sharded == await chat(direct_url)  # greedy decoding: RPC changes nothing


async def test_second_request_reuses_the_warm_coordinator(
    rpc_servers, sharding_route, tiny_model: Path,
) -> None:
    route = await sharding_route([a for a, _ in rpc_servers(2)])
    request = RouteRequest(model=str(tiny_model))
    first = await route.acquire(request)
    pid = route.supervisor.coordinators[str(tiny_model)].proc.pid
    second = await route.acquire(request)  # concurrent: shares the same process
    assert second.base_url == first.base_url
    first.release(Outcome(ok=True))
    second.release(Outcome(ok=True))
    third = await route.acquire(request)
    assert third.base_url == first.base_url
    assert route.supervisor.coordinators[str(tiny_model)].proc.pid == pid
    await chat(third.base_url, 4)
    third.release(Outcome(ok=True))


async def test_concurrent_requests_for_a_starting_model_wait_for_one_coordinator(
    rpc_servers, sharding_route, tiny_model: Path,
) -> None:
    route = await sharding_route([a for a, _ in rpc_servers(2)])
    request = RouteRequest(model=str(tiny_model))
    leases = await asyncio.gather(*(route.acquire(request) for _ in range(4)))
    assert len({lease.base_url for lease in leases}) == 1
    assert route.supervisor._generation == 1
    for lease in leases:
        lease.release(Outcome(ok=True))


async def test_ephemeral_mode_stops_the_coordinator_after_the_request(
    rpc_servers, sharding_route, tiny_model: Path,
) -> None:
    route = await sharding_route([a for a, _ in rpc_servers(1)],
                                 rpc_coordinator_mode="ephemeral")
    lease = await route.acquire(RouteRequest(model=str(tiny_model)))
    proc = route.supervisor.coordinators[str(tiny_model)].proc
    await chat(lease.base_url, 4)
    lease.release(Outcome(ok=True))
    for _ in range(200):
        if proc.poll() is not None and not route.supervisor.coordinators:
            break
        await asyncio.sleep(0.05)
    assert proc.poll() is not None
    assert not route.supervisor.coordinators
    assert all(s["attached_to"] is None for s in route.snapshot()["backends"])


async def test_probe_never_hangs_or_kills_an_attached_rpc_server(
    rpc_servers, sharding_route, tiny_model: Path,
) -> None:
    servers = rpc_servers(2)
    route = await sharding_route([a for a, _ in servers], rpc_placement="all")
    lease = await route.acquire(RouteRequest(model=str(tiny_model)))
    try:
        # Another process's probe (e.g. `sollol shard status --local` from a second gateway):
        # it gets no answer from a held rpc-server, gives up on time and resets its socket.
        port = int(servers[0][0].rsplit(":", 1)[1])
        for _ in range(3):
            # (once the kernel's one-slot queue is taken, the connect itself times out)
            with pytest.raises(ProbeError, match=r"no reply in time|connect timed out"):
                await asyncio.to_thread(probe, "127.0.0.1", port, 0.5)
        # In this process, the hook and the health loop do not even connect.
        states = {b.backend.address: b for b in route.state().backends}
        assert all(s.healthy and "held by" in s.detail for s in states.values())
        await route.shards.probe_free()  # skips held rpc-servers
        assert all(proc.alive() for _, proc in servers)
        assert await chat(lease.base_url, 8)
    finally:
        lease.release(Outcome(ok=True))
    assert all(proc.alive() for _, proc in servers)


async def test_a_backend_down_at_start_is_left_out_with_a_warning(
    rpc_servers, sharding_route, tiny_model: Path,
) -> None:
    (alive, _), (dead, dead_proc) = rpc_servers(2)
    route = await sharding_route([alive, dead])
    dead_proc.kill()
    route.shards.shards[dead].healthy = True  # as if killed right after the last health probe
    lease = await route.acquire(RouteRequest(model=str(tiny_model)))
    try:
        assert route.supervisor.coordinators[str(tiny_model)].plan.addresses == [alive]
        assert any(dead in w and "leaving out" in w for w in route.snapshot()["warnings"])
        assert await chat(lease.base_url, 4)
    finally:
        lease.release(Outcome(ok=True))


async def test_no_usable_backend_is_a_clear_error_with_numbers(
    rpc_servers, sharding_route, tiny_model: Path,
) -> None:
    ((address, proc),) = rpc_servers(1)
    route = await sharding_route([address])
    proc.kill()
    await route.shards.probe_free()
    with pytest.raises(NoRouteAvailable, match=r"needs ~0\.\d+ GiB but no usable rpc-server"):
        await route.acquire(RouteRequest(model=str(tiny_model)))
    assert str(tiny_model) in route.snapshot()["unservable"]


async def test_a_second_model_evicts_the_least_recently_used_idle_one(
    rpc_servers, sharding_route, tiny_model: Path, tmp_path: Path,
) -> None:
    from sollol.errors import Overloaded
    from sollol.testing.tiny_models import make_tiny_model

    other = str(make_tiny_model(tmp_path / "other.gguf", seed=7))
    route = await sharding_route([a for a, _ in rpc_servers(2)], rpc_wait_timeout=1.0,
                                 rpc_placement="all", rpc_max_coordinators=1)
    first = await route.acquire(RouteRequest(model=str(tiny_model)))
    with pytest.raises(Overloaded, match="busy"):  # its rpc-servers are held by a busy model
        await route.acquire(RouteRequest(model=other))
    first.release(Outcome(ok=True))
    old = route.supervisor.coordinators[str(tiny_model)].proc
    second = await route.acquire(RouteRequest(model=other))  # the idle one makes room
    try:
        assert old.poll() is not None
        assert list(route.supervisor.coordinators) == [other]
        assert await chat(second.base_url, 4)
    finally:
        second.release(Outcome(ok=True))


async def test_an_idle_coordinator_stops_after_the_idle_timeout(
    rpc_servers, sharding_route, tiny_model: Path,
) -> None:
    route = await sharding_route([a for a, _ in rpc_servers(1)], rpc_idle_timeout=0.5)
    lease = await route.acquire(RouteRequest(model=str(tiny_model)))
    proc = route.supervisor.coordinators[str(tiny_model)].proc
    lease.release(Outcome(ok=True))
    for _ in range(200):  # the process exits a moment before the supervisor forgets it
        if proc.poll() is not None and not route.supervisor.coordinators:
            break
        await asyncio.sleep(0.05)
    assert proc.poll() is not None and not route.supervisor.coordinators


async def test_a_request_cancelled_during_an_eviction_leaves_no_rpc_server_held(
    rpc_servers, sharding_route, tiny_model: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The gateway cancels a request whose client went away: the scheduler's bookkeeping
    (stop the least recently used coordinator, release its rpc-servers) must still finish."""
    from sollol_plugins.llamacpp_rpc import procs

    from sollol.testing.tiny_models import make_tiny_model

    other = str(make_tiny_model(tmp_path / "other.gguf", seed=7))
    route = await sharding_route([a for a, _ in rpc_servers(2)], rpc_placement="all",
                                 rpc_max_coordinators=1)
    first = await route.acquire(RouteRequest(model=str(tiny_model)))
    first.release(Outcome(ok=True))
    old = route.supervisor.coordinators[str(tiny_model)]

    terminate = procs.terminate
    monkeypatch.setattr(procs, "terminate", lambda proc: (time.sleep(0.5), terminate(proc))[1])
    request = asyncio.create_task(route.acquire(RouteRequest(model=other)))
    for _ in range(2000):
        if old.state == "stopped":
            break
        await asyncio.sleep(0.005)
    assert old.state == "stopped"  # the eviction is under way, its process being stopped
    request.cancel()  # the client went away
    with pytest.raises(asyncio.CancelledError):
        await request

    lease = await route.acquire(RouteRequest(model=other))
    try:
        assert old.proc.poll() is not None
        assert sorted(route.supervisor.coordinators) == [other]
        assert await chat(lease.base_url, 4)
    finally:
        lease.release(Outcome(ok=True))


async def test_a_proxy_in_the_environment_is_not_used_to_reach_a_coordinator(
    rpc_servers, sharding_route, tiny_model: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Homelab machines often set http_proxy; the coordinator's /health is on loopback."""
    from sollol.core.processes import free_port

    dead_proxy = f"http://127.0.0.1:{free_port()}"
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, dead_proxy)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    route = await sharding_route([a for a, _ in rpc_servers(1)], rpc_startup_timeout=60)
    lease = await route.acquire(RouteRequest(model=str(tiny_model)))
    lease.release(Outcome(ok=True))
    assert route.supervisor.coordinators[str(tiny_model)].report is not None
