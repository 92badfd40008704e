"""The pool route against emulated Ollama nodes: discovery, health, balancing, queueing."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from sollol.core.router import POOL
from sollol.core.runtime import ClusterRuntime
from sollol.errors import ModelNotFound, NoRouteAvailable, Overloaded
from sollol.models import RouteRequest
from sollol.routes import Outcome
from sollol.testing.emulator import EmulatedModel, Faults

OK = Outcome(True, 200, tokens=10, seconds=0.1)


@contextlib.asynccontextmanager
async def pool(*nodes, **config):
    cluster = ClusterRuntime.from_config(overrides={"ollama_nodes": [n.address for n in nodes],
                                             "health_interval": 0.2, **config})
    await cluster.start()
    try:
        yield cluster.routes[POOL]
    finally:
        await cluster.stop()


async def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_state_lists_nodes_models_and_memory(emulator):
    a = emulator(models=["m", EmulatedModel("big", loaded=False)])
    b = emulator(models=["m"])
    async with pool(a, b, pool_node_memory={a.address: "8GiB"}) as route:
        state = route.state()
        assert [s.backend.id for s in state.backends] == [a.address, b.address]
        assert state.serves("m") and state.serves("big") and state.serves("big:latest")
        first = state.backends[0]
        assert first.loaded == {"m", "m:latest"} and first.memory_total == 8 * 2**30
        assert first.memory_free == 8 * 2**30 - 2_000_000_000
        names = {e["name"] for e in await route.list_models()}
        assert names == {"m:latest", "big:latest"}
        assert {e["name"] for e in await route.running()} == {"m:latest"}
        info = await route.model_info("big")
        assert info.parameter_count == 3_000_000_000 and info.layer_count == 28
        snap = route.snapshot()
        assert snap["nodes"][0]["health"] == "healthy" and snap["queue"]["waiting"] == 0


async def test_never_sends_a_model_to_a_node_that_lacks_it(emulator):
    a, b = emulator(models=["only-a"]), emulator(models=["only-b"])
    async with pool(a, b) as route:
        for _ in range(5):
            lease = await route.acquire(RouteRequest("only-b"))
            assert lease.backend.id == b.address
            lease.release(OK)
        with pytest.raises(ModelNotFound, match="'ghost' not found"):
            await route.acquire(RouteRequest("ghost"))


async def test_prefers_the_node_with_the_model_loaded(emulator):
    cold = emulator(models=[EmulatedModel("m", loaded=False)])
    warm = emulator(models=["m"])
    async with pool(cold, warm) as route:
        leases = [await route.acquire(RouteRequest("m")) for _ in range(3)]
        assert {lease.backend.id for lease in leases} == {warm.address}
        for lease in leases:
            lease.release(OK)


async def test_spreads_by_outstanding_requests(emulator):
    a, b = emulator(models=["m"]), emulator(models=["m"])
    async with pool(a, b) as route:
        leases = [await route.acquire(RouteRequest("m")) for _ in range(6)]
        counts = {n: sum(lease.backend.id == n for lease in leases) for n in (a.address,
                                                                               b.address)}
        assert counts == {a.address: 3, b.address: 3}
        for lease in leases:
            lease.release(OK)


async def test_concurrency_limit_queue_and_overload(emulator):
    a = emulator(models=["m"])
    async with pool(a, pool_node_concurrency=1, pool_queue_size=1,
                    pool_queue_timeout=5) as route:
        first = await route.acquire(RouteRequest("m"))
        queued = asyncio.create_task(route.acquire(RouteRequest("m")))
        await wait_for(lambda: route.snapshot()["queue"]["waiting"] == 1)
        with pytest.raises(Overloaded, match="queue is full") as err:
            await route.acquire(RouteRequest("m"))
        assert err.value.retry_after >= 1
        first.release(OK)
        second = await asyncio.wait_for(queued, 5)
        assert second.backend.id == a.address
        second.release(OK)


async def test_full_queue_still_uses_a_free_slower_node(emulator):
    fast, slow = emulator(models=["m"]), emulator(models=["m"])
    async with pool(fast, slow, pool_node_concurrency=1, pool_queue_size=0) as route:
        route.nodes[fast.address].sec_per_token = 0.01
        route.nodes[slow.address].sec_per_token = 0.04
        held = await route.acquire(RouteRequest("m"))
        assert held.backend.id == fast.address
        # the balancer would rather wait for the fast node, but there is no room to wait
        lease = await route.acquire(RouteRequest("m"))
        assert lease.backend.id == slow.address
        with pytest.raises(Overloaded, match="queue is full"):
            await route.acquire(RouteRequest("m"))
        for done in (held, lease):
            done.release(OK)


async def test_queue_timeout_is_overloaded(emulator):
    a = emulator(models=["m"])
    async with pool(a, pool_node_concurrency=1, pool_queue_timeout=0.2) as route:
        held = await route.acquire(RouteRequest("m"))
        with pytest.raises(Overloaded, match=r"within 0\.2s"):
            await route.acquire(RouteRequest("m"))
        held.release(OK)
        assert route.snapshot()["queue"]["waiting"] == 0


async def test_cancelled_waiter_leaves_the_queue(emulator):
    a = emulator(models=["m"])
    async with pool(a, pool_node_concurrency=1) as route:
        held = await route.acquire(RouteRequest("m"))
        task = asyncio.create_task(route.acquire(RouteRequest("m")))
        await wait_for(lambda: route.snapshot()["queue"]["waiting"] == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        held.release(OK)
        assert route.snapshot()["queue"]["waiting"] == 0
        assert route.nodes[a.address].in_flight == 0


async def test_exclude_and_pinned_backend(emulator):
    a, b = emulator(models=["m"]), emulator(models=["m"])
    async with pool(a, b) as route:
        lease = await route.acquire(RouteRequest("m"), exclude=[a.address])
        assert lease.backend.id == b.address
        lease.release(OK)
        with pytest.raises(NoRouteAvailable, match="no other pool node"):
            await route.acquire(RouteRequest("m"), exclude=[a.address, b.address])
        pinned = await route.acquire(RouteRequest("m"), backend=f"http://{a.address}")
        assert pinned.backend.id == a.address
        pinned.release(OK)
        with pytest.raises(NoRouteAvailable, match="not configured"):
            await route.acquire(RouteRequest("m"), backend="10.9.9.9:1")


async def test_conversation_affinity(emulator):
    a, b = emulator(models=["m"]), emulator(models=["m"])
    async with pool(a, b) as route:
        first = await route.acquire(RouteRequest("m", conversation_key="conv"))
        home = first.backend.id
        first.release(OK)
        busy = await route.acquire(RouteRequest("m"), backend=home)  # the other node is now
        # less loaded, so balancing alone would send the next request there...
        for _ in range(3):
            again = await route.acquire(RouteRequest("m", conversation_key="conv"))
            assert again.backend.id == home  # ...but the conversation stays put
            again.release(OK)
        busy.release(OK)


async def test_passive_ejection_and_readmission(emulator):
    a, b = emulator(models=["m"]), emulator(models=["m"])
    async with pool(a, b, pool_eject_failures=2, pool_eject_seconds=0.3) as route:
        for _ in range(2):
            lease = await route.acquire(RouteRequest("m"), backend=a.address)
            lease.release(Outcome(False, 500, "boom"))
        assert route.snapshot()["nodes"][0]["health"] == "ejected"
        for _ in range(4):
            lease = await route.acquire(RouteRequest("m"))
            assert lease.backend.id == b.address
            lease.release(OK)
        await wait_for(lambda: route.nodes[a.address].available(time.monotonic()))


async def test_last_healthy_node_is_never_ejected(emulator):
    a = emulator(models=["m"])
    async with pool(a, pool_eject_failures=1) as route:
        for _ in range(3):
            lease = await route.acquire(RouteRequest("m"))
            lease.release(Outcome(False, 500, "boom"))
        assert route.state().available


async def test_the_last_node_holding_a_model_is_never_ejected(emulator):
    a, b = emulator(models=["m"]), emulator(models=["other"])
    async with pool(a, b, pool_eject_failures=1) as route:
        for _ in range(3):
            lease = await route.acquire(RouteRequest("m"))
            lease.release(Outcome(False, 500, "boom"))
        # b is up, but cannot serve "m": ejecting a would only turn 500s into 503s
        assert route.nodes[a.address].available(time.monotonic())
        assert route.snapshot()["nodes"][0]["health"] == "healthy"


async def test_active_health_notices_a_dead_node_and_its_return(emulator):
    a, b = emulator(models=["m"]), emulator(models=["m"])
    async with pool(a, b, pool_health_timeout=0.5) as route:
        a.set_faults(refuse=True)
        await wait_for(lambda: not route.nodes[a.address].healthy)
        assert "connection failed" in route.nodes[a.address].detail
        lease = await route.acquire(RouteRequest("m"))
        assert lease.backend.id == b.address
        lease.release(OK)
        a.clear_faults()
        await wait_for(lambda: route.nodes[a.address].healthy)


async def test_a_hanging_probe_blocks_neither_routing_nor_stop(emulator):
    hung = emulator(models=["m"], faults=Faults(hang=True, scope="all"))
    good = emulator(models=["m"])
    cluster = ClusterRuntime.from_config(overrides={"ollama_nodes": [hung.address, good.address],
                                             "health_interval": 30, "pool_health_timeout": 4})
    await cluster.start()
    route = cluster.routes[POOL]
    loop_task = route._task
    # the start-up probe timed out on the client side; wait until the node has seen it go, so
    # that the in-flight request counted below is the new probe's
    await wait_for(lambda: hung.stats()["in_flight"] == 0)
    seen = sum(hung.stats()["requests"].values())
    route.nodes[hung.address].next_probe = 0.0  # probe now (the next round was 30 s away)
    route._wake.set()
    await wait_for(lambda: hung.stats()["in_flight"] == 1  # the probe waits for an answer
                   and sum(hung.stats()["requests"].values()) > seen)
    lease = await route.acquire(RouteRequest("m"))
    assert lease.backend.id == good.address
    assert hung.stats()["in_flight"] == 1  # routing did not wait for the probe to end
    lease.release(OK)
    await cluster.stop()
    # the loop saw the stop when the probe ended; it was not left waiting for its next round
    assert loop_task.done() and not loop_task.cancelled()


async def test_no_healthy_node_is_503_naming_the_cause(emulator):
    a = emulator(models=["m"], faults=Faults(refuse=True))
    async with pool(a) as route:
        with pytest.raises(NoRouteAvailable, match="connection failed"):
            await route.acquire(RouteRequest("m"))


async def test_a_pool_without_nodes_says_so():
    from sollol.core.processes import free_port

    async with pool(pool_discovery_cidr="127.0.0.1/32", pool_discovery_port=free_port()) as route:
        assert route.nodes == {}  # the scan found nobody: not a missing model but no nodes
        with pytest.raises(NoRouteAvailable, match="no nodes"):
            await route.acquire(RouteRequest("m"))


async def test_waiters_fail_fast_when_the_nodes_die(emulator):
    a = emulator(models=["m"])
    async with pool(a, pool_node_concurrency=1, pool_queue_timeout=30) as route:
        held = await route.acquire(RouteRequest("m"))
        waiting = asyncio.create_task(route.acquire(RouteRequest("m")))
        await wait_for(lambda: route.snapshot()["queue"]["waiting"] == 1)
        a.set_faults(refuse=True)
        with pytest.raises(NoRouteAvailable):
            await asyncio.wait_for(waiting, 10)
        held.release(Outcome(False, 502, "cut", connect_failed=True))


async def test_management_fan_out(emulator):
    a, b = emulator(models=["m"]), emulator(models=["m"], library=["m"])
    async with pool(a, b) as route:
        events = [e async for e in route.pull("new")]
        assert {e["node"] for e in events if "node" in e} == {a.address, b.address}
        assert events[-1]["error"].startswith(f"failed on {b.address}")
        assert route.nodes[a.address].has_model("new")  # re-probed after the pull
        only_a = [e async for e in route.pull("other", nodes=[a.address])]
        assert only_a[-1] == {"status": "success", "nodes": {a.address: "success"}}
        copied = await route.copy("m", "m2")
        assert copied["status"] == "success"
        deleted = await route.delete("new")
        assert deleted["status"] == "error" and deleted["http_status"] == 502
        assert deleted["nodes"][a.address] == {"status": "success"}
        gone = await route.delete("new")
        assert gone["http_status"] == 404


async def test_management_on_a_hanging_node_ends_at_the_request_timeout(emulator):
    a, b = emulator(models=["m"]), emulator(models=["m"])
    async with pool(a, b, request_timeout=1.0) as route:
        a.set_faults(hang=True, scope="all")  # accepts every request, never answers
        events = await asyncio.wait_for(_collect(route.pull("new")), 60)
        assert events[-1]["nodes"][b.address] == "success"
        assert "Timeout" in events[-1]["nodes"][a.address]
        assert not route.nodes[a.address].healthy  # re-probed after the pull...
        named = [a.address, b.address]  # ...so it is a target only when named
        copied = await asyncio.wait_for(route.copy("m", "m2", nodes=named), 60)
        assert copied["nodes"][b.address] == {"status": "success"}
        assert copied["nodes"][a.address]["status"] == 504


async def _collect(events):
    return [e async for e in events]


async def test_discovery_scan_and_default(emulator, monkeypatch):
    from sollol.core.processes import free_port

    a = emulator(models=["m"])
    # a proxy in the environment must not take the scan's probes (it cannot reach the LAN)
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")
    async with pool(pool_discovery_cidr="127.0.0.1/32", pool_discovery_port=a.port) as route:
        assert list(route.nodes) == [a.address]
        assert route.nodes[a.address].backend.labels["source"] == "scan 127.0.0.1/32"
    monkeypatch.setenv("OLLAMA_HOSTS", f"{a.address},openai://127.0.0.1:9")
    cluster = ClusterRuntime.from_config()
    backends = {b.id: b.kind for b in cluster.discover()}
    assert backends == {a.address: "ollama", "127.0.0.1:9": "openai"}
    monkeypatch.delenv("OLLAMA_HOSTS")
    assert [b.id for b in ClusterRuntime.from_config().discover()] == ["127.0.0.1:11434"]
