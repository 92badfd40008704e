"""Fan-out over emulated nodes: input order, bounded concurrency, captured errors, cancellation,
aggregation."""

from __future__ import annotations

import asyncio
import threading

import pytest

import sollol
from sollol.client.aggregate import concatenate, synthesis_prompt
from sollol.client.tasks import Task, TaskResult
from sollol.errors import RequestError

MODEL = "llama3.2:1b"


def _in_flight(cluster: sollol.Cluster) -> int:
    return sum(b.in_flight for s in cluster.runtime.route_states().values() for b in s.backends)


def test_results_come_back_in_input_order(emulator, pool_cluster) -> None:
    nodes = [emulator(models=[MODEL], tokens_per_second=50, response_tokens=30) for _ in range(2)]
    lengths = [25, 1, 12, 2, 20, 1, 8, 3, 15, 1]  # long and short mixed: they finish out of order
    tasks = [Task.generate(MODEL, f"prompt {i}", id=f"t{i}", options={"num_predict": n})
             for i, n in enumerate(lengths)]
    finished: list[int] = []
    with pool_cluster([n.url for n in nodes]) as c:
        results = c.gather(tasks, on_result=lambda r: finished.append(r.index))
    assert [r.id for r in results] == [f"t{i}" for i in range(len(tasks))]
    assert [r.index for r in results] == list(range(len(tasks)))
    assert [r.response.tokens for r in results] == lengths
    assert all(r.task is t for r, t in zip(results, tasks, strict=True))
    assert sorted(finished) == list(range(len(tasks)))
    assert finished != sorted(finished), "the tasks all finished in input order: test is moot"


def test_concurrency_defaults_to_the_pools_capacity(emulator, pool_cluster) -> None:
    nodes = [emulator(models=[MODEL], tokens_per_second=200, parallel=0) for _ in range(3)]
    with pool_cluster([n.url for n in nodes], pool_node_concurrency=2) as c:
        assert asyncio.run(c.acapacity([Task.chat(MODEL, "x")])) == 6
        run = c.fan_out([f"q{i}" for i in range(30)], model=MODEL)
        results = run.wait()
    assert run.concurrency == 12  # every slot busy, one request per slot queued in the pool
    assert all(r.ok for r in results)
    peaks = [n.stats()["max_in_flight"] for n in nodes]
    assert max(peaks) == 2, peaks  # work ran in parallel, and the per-node limit held
    assert sum(n.stats()["requests"].get("/api/chat", 0) for n in nodes) == 30


def test_explicit_concurrency_bounds_the_work_in_flight(emulator, pool_cluster) -> None:
    node = emulator(models=[MODEL], tokens_per_second=100, parallel=0)
    with pool_cluster([node.url], pool_node_concurrency=8) as c:
        results = c.gather([f"q{i}" for i in range(12)], model=MODEL, concurrency=3)
    assert all(r.ok for r in results)
    assert node.stats()["max_in_flight"] <= 3


def test_errors_are_captured_per_task(emulator, pool_cluster) -> None:
    node = emulator(models=[MODEL])
    tasks = [Task.chat(MODEL, "fine", id="a"), Task.chat("missing-model", "x", id="b"),
             Task.generate(MODEL, "bad options", id="c", options=[1]),
             Task.embed(MODEL, "fine too", id="d")]
    with pool_cluster([node.url]) as c:
        results = c.gather(tasks)
    assert [r.ok for r in results] == [True, False, False, True]
    missing, bad = results[1], results[2]
    assert missing.error_type == "ModelNotFound" and missing.status == 404
    assert "missing-model" in missing.error
    assert bad.error_type == "RequestError" and "options" in bad.error
    with pytest.raises(RequestError):
        bad.unwrap()
    assert results[3].unwrap().embeddings


def test_a_backend_failure_is_captured_not_raised(emulator, pool_cluster) -> None:
    node = emulator(models=[MODEL])
    with pool_cluster([node.url]) as c:
        node.set_faults(error_status=500, error_count=1)
        results = c.gather([f"q{i}" for i in range(4)], model=MODEL, concurrency=1)
    failed = [r for r in results if not r.ok]
    assert len(failed) == 1 and failed[0].error_type == "BackendError"
    assert failed[0].status is None or failed[0].status >= 500
    assert sum(r.ok for r in results) == 3


async def test_cancel_stops_outstanding_work(emulator, pool_cluster) -> None:
    node = emulator(models=[MODEL], tokens_per_second=20, response_tokens=10)  # ~0.5 s each
    async with pool_cluster([node.url]) as c:
        run = c.fan_out([f"q{i}" for i in range(20)], model=MODEL, concurrency=2)

        def first_done(result: TaskResult) -> None:
            run.cancel()

        run.on_result = first_done
        results = await run
        assert len(results) == 20
        ok = [r for r in results if r.ok]
        cancelled = [r for r in results if r.cancelled]
        assert 1 <= len(ok) <= 2 and len(ok) + len(cancelled) == 20
        assert all(r.error for r in cancelled)
        assert _in_flight(c) == 0, "a cancelled request kept its lease"
        await asyncio.sleep(0.2)
    assert node.stats()["requests"]["/api/chat"] <= 2  # nothing new started after the cancel


async def test_cancelling_the_awaiting_task_cuts_in_flight_requests(emulator, pool_cluster) -> None:
    node = emulator(models=[MODEL], tokens_per_second=10, response_tokens=50)  # ~5 s each
    async with pool_cluster([node.url]) as c:
        run = c.fan_out([f"q{i}" for i in range(6)], model=MODEL, concurrency=3)
        waiting = asyncio.ensure_future(run)
        while node.stats()["in_flight"] < 3:
            await asyncio.sleep(0.02)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert _in_flight(c) == 0
        for _ in range(100):  # the node notices the closed connections
            if node.stats()["in_flight"] == 0:
                break
            await asyncio.sleep(0.05)
        assert node.stats()["in_flight"] == 0
        assert node.stats()["requests"]["/api/chat"] == 3


def test_cancel_from_another_thread(emulator, pool_cluster) -> None:
    node = emulator(models=[MODEL], tokens_per_second=20, response_tokens=10)
    with pool_cluster([node.url]) as c:
        run = c.fan_out([f"q{i}" for i in range(10)], model=MODEL, concurrency=1)
        started = threading.Event()
        run.on_result = lambda _r: started.set()
        timer = threading.Thread(target=lambda: (started.wait(30), run.cancel()))
        timer.start()
        results = run.wait()
        timer.join()
    assert results[0].ok and results[-1].cancelled
    assert sum(r.cancelled for r in results) >= 8


def test_cancel_before_the_run_starts_nothing(emulator, pool_cluster) -> None:
    node = emulator(models=[MODEL])
    with pool_cluster([node.url]) as c:
        run = c.fan_out(["a", "b"], model=MODEL)
        run.cancel()
        results = run.wait()
        with pytest.raises(RuntimeError, match="runs once"):
            run.wait()
    assert [r.cancelled for r in results] == [True, True]
    assert node.stats()["requests"].get("/api/chat", 0) == 0


def test_concatenate_and_synthesis(emulator, pool_cluster) -> None:
    node = emulator(models=[MODEL])
    roles = {"critic": "Find flaws.", "optimist": "Find strengths.", "ghost": "never answers"}
    tasks = [Task.chat(MODEL if role != "ghost" else "absent", "The plan: ship on Friday.",
                       system=prompt, id=role) for role, prompt in roles.items()]
    with pool_cluster([node.url]) as c:
        results = c.gather(tasks)
        text = concatenate(results)
        assert text.index("### critic") < text.index("### optimist") and "ghost" not in text
        assert "[failed:" in concatenate(results, include_failed=True)
        prompt = synthesis_prompt(results, "Merge these.")
        assert prompt.startswith("Merge these.") and "ghost" in prompt
        assert results[0].text in prompt and results[1].text in prompt
        final = c.synthesize(MODEL, results, "Merge these.")
    assert final.text and final.route == "pool"
    with pytest.raises(RequestError, match="nothing to synthesize"):
        synthesis_prompt(results[2:])


def test_plain_prompts_need_a_model(emulator, pool_cluster) -> None:
    node = emulator(models=[MODEL])
    with pool_cluster([node.url]) as c:
        with pytest.raises(ValueError, match="model="):
            c.fan_out(["hello"])
        with pytest.raises(TypeError, match=r"sollol\.Task"):
            c.fan_out([42])  # type: ignore[list-item]
        assert c.gather([]) == []


class _SameLoop:
    """A `Runner` for a FanOut driven directly on the test's loop."""

    async def call(self, fn):
        return await fn()

    def call_sync(self, fn):
        raise AssertionError("not used")


async def test_a_full_route_queue_is_waited_out_not_reported() -> None:
    from sollol.client.fanout import MAX_REQUEUES, FanOut
    from sollol.client.tasks import Response
    from sollol.errors import Overloaded

    attempts: dict[str, int] = {}

    async def send(task: Task) -> Response:
        attempts[task.id] = attempts.get(task.id, 0) + 1
        if task.id == "busy" and attempts[task.id] <= 2:
            raise Overloaded("queue full", retry_after=0.01)
        if task.id == "always-busy":
            raise Overloaded("queue full", retry_after=0.01)
        return Response("generate", task.model, {"response": task.id, "eval_count": 1})

    tasks = (Task.generate("m", "x", id="busy"), Task.generate("m", "x", id="always-busy"),
             Task.generate("m", "x", id="free"))
    results = await FanOut(tasks, send=send, runner=_SameLoop(), concurrency=3)
    assert [r.ok for r in results] == [True, False, True]
    assert results[0].text == "busy" and attempts["busy"] == 3
    assert results[1].error_type == "Overloaded"
    assert attempts["always-busy"] == MAX_REQUEUES + 1


async def test_capacity_counts_the_slots_of_the_routes_that_serve_the_tasks() -> None:
    from sollol.client.fanout import capacity
    from sollol.errors import ModelNotFound
    from sollol.models import Backend, BackendState, RouteDecision, RouteState

    def node(name: str, models: set[str], slots: int | None, healthy: bool = True):
        return BackendState(Backend(name, "ollama", f"{name}:1"), healthy=healthy,
                            models=models, capacity=slots)

    class FakeRuntime:
        def route_states(self):
            return {
                "pool": RouteState("pool", (node("a", {"m:latest"}, 4), node("b", {"m"}, None),
                                            node("c", {"other"}, 8),
                                            node("d", {"m"}, 4, healthy=False))),
                "sharding": RouteState("sharding", (node("r1", set(), None),
                                                    node("r2", set(), None)), capacity=1),
            }

        async def decide(self, request):
            if request.model == "unknown":
                raise ModelNotFound("no")
            route = "sharding" if request.model == "big" else "pool"
            return RouteDecision(route, "test", "test")

    runtime = FakeRuntime()
    # a (4 slots) + b (unknown: 1); c lacks the model, d is down.
    assert await capacity(runtime, [Task.chat("m", "x"), Task.chat("m:latest", "y")]) == 5
    assert await capacity(runtime, [Task.chat("big", "x")]) == 1  # the route's own figure
    assert await capacity(runtime, [Task.chat("m", "x"), Task.chat("big", "y")]) == 6
    assert await capacity(runtime, [Task.chat("unknown", "x")]) == 1  # never below one
    assert await capacity(runtime, []) == 4 + 1 + 8 + 1  # every route
