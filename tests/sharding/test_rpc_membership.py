"""rpc-servers joining and leaving a running sharding route (real rpc-servers and coordinators):
a coordinator using a removed rpc-server drains, then restarts on the rest when next needed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from sollol_plugins.llamacpp_rpc.rpc_probe import probe

from sollol.cli import build_cli
from sollol.core.plugin_manager import get_plugin_manager
from sollol.core.runtime import ClusterRuntime
from sollol.errors import BackendNotFound, RequestError
from sollol.gateway import GatewayThread
from sollol.models import RouteRequest
from sollol.routes import Outcome

pytestmark = [pytest.mark.llamacpp, pytest.mark.slow]
PROMPT = [{"role": "user", "content": "hello"}]


async def chat(base_url: str) -> str:
    async with httpx.AsyncClient(timeout=120) as client:
        response = await client.post(base_url + "/v1/chat/completions", json={
            "messages": PROMPT, "max_tokens": 8, "temperature": 0})
    response.raise_for_status()
    return response.json()["choices"][0]["message"]["content"]


async def test_a_removed_rpc_server_drains_its_coordinator_then_it_restarts_on_the_rest(
        rpc_servers, sharding_route, tiny_model: Path) -> None:
    (a, _), (b, _), (c, _) = rpc_servers(3)
    route = await sharding_route([a, b], rpc_placement="all")  # spread: a layer on each
    model = str(tiny_model)
    lease = await route.acquire(RouteRequest(model=model))
    old = route.supervisor.coordinators[model]
    assert old.plan.addresses == [a, b]

    added = await route.add_backend(c)
    assert added["added"] == [f"rpc:{c}"] and added["backend"]["healthy"]
    assert (await route.add_backend(c))["added"] == []  # idempotent

    removed = await route.remove_backend(b)
    assert removed["removed"][0]["draining"] == [old.id]
    assert b not in route.shards.shards
    # the request in flight still runs on the draining coordinator
    assert old.alive() and old.draining and await chat(lease.base_url)
    waiting = asyncio.create_task(route.acquire(RouteRequest(model=model)))
    await asyncio.sleep(0.5)  # a checkout poll or two: it must wait for the drain
    assert not waiting.done()
    lease.release(Outcome(ok=True))  # the last request ends: the coordinator stops
    new_lease = await asyncio.wait_for(waiting, 120)
    new = route.supervisor.coordinators[model]
    assert new is not old and not old.alive()
    assert sorted(new.plan.addresses) == sorted([a, c])
    assert await chat(new_lease.base_url)
    new_lease.release(Outcome(ok=True))
    host, port = b.rsplit(":", 1)
    probe(host, int(port), 5)  # the removed rpc-server was left running, only forgotten

    with pytest.raises(BackendNotFound):
        await route.remove_backend(b)
    with pytest.raises(RequestError):
        await route.add_backend("127.0.0.1:notaport")
    # an operator's removal sticks through re-discovery; an operator's addition too
    changes = await route.sync_backends([], prune=True)
    assert changes == {"added": [], "removed": [f"rpc:{a}"]}  # a came from the config only
    assert set(route.shards.shards) == {c}


def test_rpc_add_and_remove_through_the_gateway(rpc_servers, sharding_config) -> None:
    (a, _), (b, _) = rpc_servers(2)
    config = sharding_config([a])
    cluster = ClusterRuntime(config=config, pm=get_plugin_manager(["llamacpp_rpc"]))
    runner = CliRunner()
    cli = build_cli()
    with GatewayThread(cluster) as gw:
        result = runner.invoke(cli, ["rpc", "add", b, "--gateway", gw.url])
        assert result.exit_code == 0, result.output
        assert f"added rpc-server {b}" in result.output and "healthy" in result.output
        backends = httpx.get(gw.url + "/sollol/routes/sharding").json()["backends"]
        assert {x["address"] for x in backends} == {a, b}
        result = runner.invoke(cli, ["rpc", "remove", a, "--gateway", gw.url])
        assert result.exit_code == 0 and f"removed rpc-server {a}" in result.output
        backends = httpx.get(gw.url + "/sollol/routes/sharding").json()["backends"]
        assert [x["address"] for x in backends] == [b]
        result = runner.invoke(cli, ["rpc", "remove", a, "--gateway", gw.url])
        assert result.exit_code == 1 and "is not an rpc-server" in result.output


async def test_a_loopback_rpc_server_started_later_is_found_by_rediscovery(
        processes, llama_binaries, sharding_config) -> None:
    from sollol.core.processes import free_port

    port = free_port()
    config = sharding_config([], rpc_discover_loopback=True, rpc_discovery_ports=[port],
                             discovery_interval=0.2)
    cluster = ClusterRuntime(config=config, pm=get_plugin_manager(["llamacpp_rpc"]))
    await cluster.start()
    try:
        route = cluster.routes["sharding"]
        assert route.shards.shards == {}
        proc = processes.start("rpc-later", [llama_binaries.rpc_server, "-H", "127.0.0.1",
                                             "-p", str(port), "-t", "1"])
        address = f"127.0.0.1:{port}"
        for _ in range(600):  # polls, not a clock: until it answers and discovery ran again
            if address in route.shards.shards and route.shards.shards[address].healthy:
                break
            assert proc.alive(), proc.log_text()[-2000:]
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"re-discovery never found {address}: {route.shards.shards}")
        assert route.shards.shards[address].backend.labels["source"] == "loopback"
    finally:
        await cluster.stop()
