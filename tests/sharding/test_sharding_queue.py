"""Sharding waiters are bounded: past `rpc_queue_size` requests waiting for busy rpc-servers, a
request gets 429 (Overloaded, with Retry-After) at once instead of joining the queue; and every
spelling of a model shares its one coordinator."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from test_rpc_placement import model_needs

from sollol.errors import Overloaded
from sollol.models import RouteRequest
from sollol.routes import Outcome


@pytest.mark.llamacpp
async def test_waiters_past_the_queue_size_get_429_at_once(
    rpc_servers, sharding_route, tmp_path: Path, tiny_model: Path,
) -> None:
    from sollol.testing.tiny_models import make_tiny_model

    big = make_tiny_model(tmp_path / "big.gguf", layers=8, dim=128, seed=3)
    share = model_needs(big) * 6 // 10
    addresses = [a for a, _ in rpc_servers(2)]
    route = await sharding_route(addresses, rpc_max_coordinators=2, rpc_when_busy="wait",
                                 rpc_wait_timeout=30.0, rpc_queue_size=1,
                                 rpc_backend_memory={a: share for a in addresses})
    small = await route.acquire(RouteRequest(model=str(tiny_model)))
    try:  # the small model holds one rpc-server: the big one (needing both) must wait
        first = asyncio.create_task(route.acquire(RouteRequest(model=str(big))))
        while route.scheduler.waiting < 1 and not first.done():
            await asyncio.sleep(0.01)
        assert route.scheduler.waiting == 1
        with pytest.raises(Overloaded, match="rpc_queue_size") as refused:
            await route.acquire(RouteRequest(model=str(big)))
        assert refused.value.retry_after > 0
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert route.scheduler.waiting == 0  # a waiter that leaves frees its place
    finally:
        small.release(Outcome(ok=True))


@pytest.mark.llamacpp
async def test_spellings_of_one_model_share_one_coordinator(
    rpc_servers, sharding_route, tiny_model: Path,
) -> None:
    route = await sharding_route([a for a, _ in rpc_servers(1)])
    spellings = [str(tiny_model), str(tiny_model.parent / "." / tiny_model.name),
                 str(tiny_model.parent / ".." / tiny_model.parent.name / tiny_model.name)]
    for name in spellings:
        lease = await route.acquire(RouteRequest(model=name))
        lease.release(Outcome(ok=True))
    assert list(route.supervisor.coordinators) == [str(tiny_model)]
    assert route.supervisor.starts == {str(tiny_model): 1}


@pytest.mark.llamacpp
async def test_a_release_wakes_a_waiting_request_without_polling(
    rpc_servers, sharding_route, tmp_path: Path, tiny_model: Path,
) -> None:
    """A request waiting for busy rpc-servers sleeps until something comes free: it looks again
    once the lease holding them is released (then evicts the idle coordinator and starts its
    own), never on a timer in between."""
    from sollol.testing.tiny_models import make_tiny_model

    big = make_tiny_model(tmp_path / "big.gguf", layers=8, dim=128, seed=3)
    share = model_needs(big) * 6 // 10
    addresses = [a for a, _ in rpc_servers(2)]
    route = await sharding_route(addresses, rpc_max_coordinators=2, rpc_when_busy="evict",
                                 rpc_wait_timeout=60.0,
                                 rpc_backend_memory={a: share for a in addresses})
    small = await route.acquire(RouteRequest(model=str(tiny_model)))
    held = route.supervisor.coordinators[str(tiny_model)]
    events: list[str] = []
    waiter = asyncio.create_task(route.acquire(RouteRequest(model=str(big))))
    waiter.add_done_callback(lambda _: events.append("acquired"))
    try:  # the small model's request holds an rpc-server: the big model (needing both) waits
        while route.scheduler.waiting < 1 and not waiter.done():
            await asyncio.sleep(0.01)
        await asyncio.sleep(1.0)  # what a polling waiter would spend looking again, repeatedly
        assert not waiter.done() and route.scheduler.waiting == 1
        assert route.scheduler.rechecks == 0, "a waiter looked again with nothing released"
    finally:
        events.append("released")
        small.release(Outcome(ok=True))
    lease = await waiter
    try:
        assert events == ["released", "acquired"]
        assert route.scheduler.rechecks == 1  # woken once, by the release
        assert held.state == "stopped"  # the idle coordinator made room
        assert sorted(lease.backend.labels["rpc"].split(",")) == sorted(addresses)
        assert route.scheduler.waiting == 0
    finally:
        lease.release(Outcome(ok=True))


@pytest.mark.llamacpp
async def test_a_request_waiting_on_a_loading_coordinator_evicts_it_once_it_is_ready(
    rpc_servers, sharding_route, tmp_path: Path,
) -> None:
    """One coordinator allowed, and it is loading (a preload, or a move back to its preferred
    rpc-servers) when a request for another model arrives: nothing can be evicted yet, so the
    request waits. The coordinator becoming ready (idle) must wake it; it used to sleep until
    rpc_wait_timeout and get 429 (seen in the multi-host fault tests)."""
    from sollol.testing.tiny_models import make_tiny_model

    first = str(make_tiny_model(tmp_path / "first.gguf", layers=8, dim=384, seed=5))  # ~30 MB
    other = make_tiny_model(tmp_path / "other.gguf", seed=4)
    route = await sharding_route([a for a, _ in rpc_servers(1)], rpc_max_coordinators=1,
                                 rpc_wait_timeout=60.0)
    route.scheduler.preload(first)
    while first not in route.supervisor.coordinators:
        await asyncio.sleep(0)
    loading = route.supervisor.coordinators[first]
    assert loading.state == "starting"
    request = asyncio.create_task(route.acquire(RouteRequest(model=str(other))))
    while not route.scheduler.waiting and not request.done():
        await asyncio.sleep(0)
    waited_on = route.scheduler._changed  # what the waiting request sleeps on
    assert loading.state == "starting", "it loaded before the request came: nothing tested"
    while loading.state == "starting":
        await asyncio.sleep(0)
    assert loading.state in ("ready", "stopped"), loading.error  # loaded (maybe evicted already)
    assert waited_on.is_set(), "the coordinator is ready and idle, and no one woke the waiter"
    lease = await request
    try:
        assert loading.state == "stopped"  # evicted for the waiting model
        assert lease.backend.id == route.supervisor.coordinators[str(other)].id
    finally:
        lease.release(Outcome(ok=True))
