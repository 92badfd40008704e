"""The pool's scheduler in-process: work per release is bounded, and no wake-up is ever missed.

Nodes are built from health reports (no network); requests wait as asyncio tasks. Work is
counted in waiter inspections (`WaitQueues.inspections`), never timed.
"""

from __future__ import annotations

import asyncio
import math

from hypothesis import given, settings
from hypothesis import strategies as st
from sollol_plugins.ollama_pool.balance import choose
from sollol_plugins.ollama_pool.node import Node
from sollol_plugins.ollama_pool.pool_route import PoolRoute
from sollol_plugins.ollama_pool.pool_settings import PoolSettings
from sollol_plugins.ollama_pool.table import ModelTable

from sollol.core.runtime import ClusterRuntime, load
from sollol.models import Backend, HealthReport, RouteRequest
from sollol.routes import Lease, Outcome

OK = Outcome(True, 200, tokens=10, seconds=0.1)
SETTINGS = PoolSettings()


def make_route(**config) -> PoolRoute:
    cfg, pm = load(overrides={"plugins": ["ollama_pool"], "pool_queue_size": 100_000,
                              "pool_queue_timeout": 3600, **config})
    return PoolRoute(ClusterRuntime(config=cfg, pm=pm))


def add_node(route: PoolRoute, name: str, models: tuple[str, ...], limit: int = 1) -> Node:
    node = Node(Backend(name, "ollama", name), limit)
    node.apply(HealthReport(name, True, models=models, loaded_models=models), 0.0,
               route.settings)
    route.nodes[name] = node
    route.scheduler.members_changed()
    return node


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_a_release_inspects_a_bounded_number_of_waiters_at_any_queue_length():
    route = make_route(pool_node_concurrency=1)
    models = [f"m{i}" for i in range(8)]
    for i in range(64):  # 8 models, each on 8 nodes
        add_node(route, f"n{i}", (models[i % 8],))
    held: list[Lease] = [await route.acquire(RouteRequest(models[i % 8])) for i in range(64)]
    tasks = [asyncio.create_task(route.acquire(RouteRequest(models[i % 8])))
             for i in range(4000)]
    await settle()
    assert len(route.scheduler.waiters) == 4000
    order: list[int] = []
    per_release: list[int] = []
    done: set[asyncio.Task] = set()
    while held:
        lease = held.pop(0)
        before = route.scheduler.waiters.inspections
        lease.release(OK)
        per_release.append(route.scheduler.waiters.inspections - before)
        await settle()
        for index, task in enumerate(tasks):
            if task.done() and task not in done:
                done.add(task)
                order.append(index)
                held.append(task.result())
    assert len(done) == 4000 and len(route.scheduler.waiters) == 0
    # one placement per release (the freed slot), plus at most the one head that must wait
    assert max(per_release) <= 2, max(per_release)
    for model in range(8):  # first come, first served within each model
        mine = [i for i in order if i % 8 == model]
        assert mine == sorted(mine)


async def test_the_work_of_a_release_does_not_grow_with_nodes_or_queue():
    counts = {}
    for nodes, queued in ((8, 100), (64, 4000), (256, 4000)):
        route = make_route()
        for i in range(nodes):
            add_node(route, f"n{i}", ("m",), limit=1)
        held = [await route.acquire(RouteRequest("m")) for _ in range(nodes)]
        tasks = [asyncio.create_task(route.acquire(RouteRequest("m"))) for _ in range(queued)]
        await settle()
        before = route.scheduler.waiters.inspections
        for lease in held[:8]:
            lease.release(OK)
        counts[(nodes, queued)] = route.scheduler.waiters.inspections - before
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    # 8 releases: each places one request and finds the next head must wait, at every size
    assert set(counts.values()) == {16}, counts


ACTIONS = ["acquire", "acquire", "acquire", "release", "release", "cancel", "down", "up"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(ACTIONS), st.integers(0, 5), st.integers(0, 2)),
                min_size=1, max_size=40))
def test_no_waiter_is_left_behind_while_a_node_that_can_take_it_is_free(steps):
    """After any sequence of arrivals, releases, cancellations and health changes, no request
    waits while a healthy node holding its model (and allowed for it) has a free slot."""
    asyncio.run(_run_steps(steps))


async def _run_steps(steps) -> None:
    route = make_route(pool_node_concurrency=1)
    catalog = [("a",), ("a", "b"), ("b",)]
    nodes = [add_node(route, f"n{i}", catalog[i], limit=1) for i in range(3)]
    models = ["a", "b", "a"]
    leases: list[Lease] = []
    waiting: list[asyncio.Task] = []
    for action, x, y in steps:
        if action == "acquire":
            model = models[x % 3]
            pinned = nodes[y].id if x == 5 and model in catalog[y] else None
            exclude = [nodes[y].id] if x == 4 else []
            waiting.append(asyncio.create_task(
                route.acquire(RouteRequest(model), backend=pinned, exclude=exclude)))
        elif action == "release" and leases:
            leases.pop(x % len(leases)).release(OK)
        elif action == "cancel" and waiting:
            waiting[x % len(waiting)].cancel()
        elif action in ("down", "up"):
            node = nodes[y]
            report = HealthReport(node.id, action == "up", models=catalog[y],
                                  loaded_models=catalog[y])
            if route.scheduler.apply(node, report, route.now()):
                route.scheduler.wake([node])
        await settle()
        still = []
        for task in waiting:
            if not task.done():
                still.append(task)
            elif not task.cancelled() and task.exception() is None:
                leases.append(task.result())
        waiting = still
        now = route.now()
        for waiter in route.scheduler.waiters:
            free = [n for n in route.scheduler._candidates(waiter, now) if n.in_flight < n.cap]
            assert not free, f"{waiter.request.model} waits while {free[0].id} is free"
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    for lease in leases:
        lease.release(OK)


node_state = st.tuples(
    st.one_of(st.none(), st.floats(0.001, 0.5)),  # seconds per token (None: not measured)
    st.integers(1, 4),  # limit
    st.integers(0, 4),  # in flight (capped at the limit)
    st.booleans(),  # model loaded
)


@settings(max_examples=300, deadline=None)
@given(st.lists(node_state, min_size=1, max_size=12),
       st.one_of(st.integers(1, 200), st.just(math.inf)), st.floats(1, 500))
def test_a_fresh_table_decides_exactly_as_choose(states, queued, avg_tokens):
    """The table is a cache of choose()'s numbers, never a different policy."""
    nodes = []
    for index, (spt, limit, in_flight, loaded) in enumerate(states):
        node = Node(Backend(f"n{index}", "ollama", f"n{index}"), limit)
        node.apply(HealthReport(node.id, True, models=("m",),
                                loaded_models=("m",) if loaded else ()), 0.0, SETTINGS)
        node.sec_per_token, node.in_flight = spt, min(in_flight, limit)
        node.last_pick = index % 3  # ties too: they go to the earlier node, as in choose()
        nodes.append(node)
    expected = choose(nodes, "m", queued=queued, avg_tokens=avg_tokens, cold_penalty=5.0)
    table = ModelTable.build(nodes, "m", avg_tokens=avg_tokens, cold_penalty=5.0, stamp=0,
                             now=0.0)
    free = {n for n in nodes if n.in_flight < n.cap}
    assert table.decide(free, queued) is expected.node
