"""Run many tasks in parallel, bounded by the cluster's capacity, with results in input order.

A `FanOut` runs a fixed list of tasks on N workers (N defaults to `QUEUE_FACTOR` times the
capacity of the routes that serve the tasks' models). Each task's error is captured in its
`TaskResult`; `cancel()` stops the rest: tasks not started never start and in-flight requests
are cut (their leases go back).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import attrs

from sollol.client.tasks import Response, Task, TaskResult
from sollol.errors import Overloaded, SollolError
from sollol.models import RouteRequest

if TYPE_CHECKING:
    from sollol.core.runtime import ClusterRuntime

T = TypeVar("T")
Send = Callable[[Task], Awaitable[Response]]

QUEUE_FACTOR = 2
"""Default workers per unit of capacity: one request running in each slot and one waiting in
the route's queue. The pool balancer reads its queue as the backlog; with no one waiting it
passes over slow nodes that the backlog needs (bench/batch.py: 1.29x the ideal wall time at
1x, 1.06x at 2x), and a slot would idle between one task's end and the next one's start."""
MAX_REQUEUES = 3
"""Times a task whose route queue was full or timed out (Overloaded) is sent again."""
MAX_REQUEUE_PAUSE = 5.0


class Runner(Protocol):
    """Runs a coroutine function on the loop that owns the cluster (see `sollol.client.facade`)."""

    async def call(self, fn: Callable[[], Coroutine[Any, Any, T]]) -> T: ...

    def call_sync(self, fn: Callable[[], Coroutine[Any, Any, T]]) -> T: ...


@attrs.define(eq=False)
class FanOut:
    """Many tasks on a bounded set of workers; `await` it (or `wait()`) for the results."""

    tasks: tuple[Task, ...]
    send: Send
    runner: Runner
    concurrency: int | None = None
    """Workers; None means `QUEUE_FACTOR` x the capacity `size` reports when the run starts."""
    size: Callable[[Sequence[Task]], Awaitable[int]] | None = None
    on_result: Callable[[TaskResult], None] | None = None
    """Called on the cluster's loop as each task ends (not for tasks cut by `cancel()`)."""
    done: int = 0
    failed: int = 0
    tokens: int = 0
    started_at: float | None = None
    _results: list[TaskResult | None] = attrs.field(factory=list)
    _cancelled: bool = False
    _started: bool = False
    _loop: asyncio.AbstractEventLoop | None = None
    _inflight: set[asyncio.Future[Response]] = attrs.field(factory=set)

    def __await__(self) -> Generator[Any, None, list[TaskResult]]:
        return self.runner.call(self.run).__await__()

    def wait(self) -> list[TaskResult]:
        """Run to the end from synchronous code; Ctrl-C cancels what is outstanding."""
        return self.runner.call_sync(self.run)

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        """Stop outstanding work: nothing new starts and in-flight requests are cut.

        Safe from any thread, before or during the run; the run then returns every result,
        with `cancelled=True` on the tasks that did not finish.
        """
        self._cancelled = True
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._cut()
        else:
            loop.call_soon_threadsafe(self._cut)

    async def run(self) -> list[TaskResult]:
        """Run every task (on the cluster's loop); results in input order."""
        if self._started:
            raise RuntimeError("a FanOut runs once; make a new one with cluster.fan_out()")
        self._started = True
        self._loop = asyncio.get_running_loop()
        self.started_at = time.perf_counter()
        self._results = [None] * len(self.tasks)
        if not self.tasks:
            return []
        if self.concurrency is None:
            self.concurrency = QUEUE_FACTOR * (await self.size(self.tasks) if self.size else 1)
        workers = self.concurrency = max(1, min(self.concurrency, len(self.tasks)))
        pending = iter(range(len(self.tasks)))
        try:
            async with asyncio.TaskGroup() as group:
                for number in range(workers):
                    group.create_task(self._worker(pending), name=f"sollol-fanout-{number}")
        except BaseExceptionGroup as errors:  # an on_result callback failed: report it plainly
            raise errors.exceptions[0] from None
        return [r if r is not None else TaskResult(i, self.tasks[i], cancelled=True,
                                                   error="cancelled before it started")
                for i, r in enumerate(self._results)]

    async def _worker(self, pending: Iterator[int]) -> None:
        for index in pending:  # one iterator shared by all workers on one loop: no locking
            if self._cancelled:
                return
            task, started = self.tasks[index], time.perf_counter()
            child = asyncio.ensure_future(self._send_patiently(task))
            self._inflight.add(child)
            try:
                response = await child
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # the whole run is being cancelled: let it unwind
                self._results[index] = TaskResult(index, task, cancelled=True,
                                                  error="cancelled",
                                                  seconds=time.perf_counter() - started)
                continue
            except Exception as exc:
                result = TaskResult(index, task, error=str(exc) or type(exc).__name__,
                                    error_type=type(exc).__name__,
                                    status=getattr(exc, "status", None),
                                    seconds=time.perf_counter() - started, exception=exc)
            else:
                result = TaskResult(index, task, response=response,
                                    seconds=time.perf_counter() - started)
            finally:
                self._inflight.discard(child)
            self._store(result)

    async def _send_patiently(self, task: Task) -> Response:
        """Send `task`; a full or timed-out route queue (Overloaded) is waited out a few times."""
        for attempt in range(MAX_REQUEUES + 1):
            try:
                return await self.send(task)
            except Overloaded as exc:
                if attempt == MAX_REQUEUES:
                    raise
                await asyncio.sleep(min(exc.retry_after, MAX_REQUEUE_PAUSE))
        raise AssertionError("unreachable")

    def _store(self, result: TaskResult) -> None:
        self._results[result.index] = result
        self.done += 1
        if result.ok:
            self.tokens += result.response.tokens if result.response else 0
        else:
            self.failed += 1
        if self.on_result is not None:
            self.on_result(result)

    def _cut(self) -> None:
        for child in list(self._inflight):
            child.cancel()


async def capacity(runtime: ClusterRuntime, tasks: Iterable[Task]) -> int:
    """Requests the routes serving these tasks take at once (at least 1).

    Per route the tasks' models decide onto: the route's own `capacity` if it reports one, else
    the healthy backends listing one of the models (all healthy ones if none lists any), each
    counted as its `capacity`, or 1 when unknown. With no tasks: every route.
    """
    states = runtime.route_states()
    requests = {RouteRequest(model=t.model, endpoint=t.op) for t in tasks}
    wanted: dict[str, set[str]] = {} if requests else {name: set() for name in states}
    for request in requests:
        try:
            decision = await runtime.decide(request)
        except SollolError:
            continue  # the tasks will fail with this error themselves; it adds no capacity
        wanted.setdefault(decision.route, set()).update(_spellings(request.model))
    total = 0
    for route, models in wanted.items():
        state = states.get(route)
        if state is None:
            continue
        if state.capacity is not None:
            total += state.capacity
            continue
        healthy = state.healthy
        serving = [b for b in healthy if models & set(b.models)] or list(healthy)
        total += sum(b.capacity or 1 for b in serving)
    return max(1, total)


def _spellings(model: str) -> set[str]:
    """`llama3` and `llama3:latest` name one model."""
    if ":" in model.rsplit("/", 1)[-1]:
        return {model, model.removesuffix(":latest")}
    return {model, f"{model}:latest"}
