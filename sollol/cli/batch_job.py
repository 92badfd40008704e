"""Run a batch file through a started `sollol.Cluster`: skip finished ids, record each result."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from sollol.cli.batch_io import BatchItem, ResultWriter, drop_failed, read_done, result_record
from sollol.cli.progress import Progress
from sollol.client.tasks import TaskResult

if TYPE_CHECKING:
    from sollol.client.facade import Cluster


@attrs.frozen
class BatchPlan:
    """What a run will do: the pending items, and what an earlier run already finished."""

    total: int
    pending: tuple[BatchItem, ...]
    done_ok: int
    done_failed: int
    retried: int = 0


@attrs.define
class BatchSummary:
    """How a run ended."""

    total: int
    done_before: int
    ok: int = 0
    failed: int = 0
    failed_before: int = 0
    interrupted: bool = False
    concurrency: int = 0

    @property
    def left(self) -> int:
        return self.total - self.done_before - self.ok - self.failed

    @property
    def success(self) -> bool:
        return not self.interrupted and not self.failed and not self.failed_before


def plan(items: Sequence[BatchItem], output: Path, *, retry_failed: bool = False) -> BatchPlan:
    """Pending items: those whose id is not in `output` yet (nor failed there, unless retrying)."""
    retried = drop_failed(output) if retry_failed else 0
    done = read_done(output)
    ids = {str(item.id) for item in items}
    pending = tuple(item for item in items if str(item.id) not in done)
    done_ok = sum(1 for key, ok in done.items() if ok and key in ids)
    done_failed = sum(1 for key, ok in done.items() if not ok and key in ids)
    return BatchPlan(len(items), pending, done_ok, done_failed, retried)


async def run(cluster: Cluster, todo: BatchPlan, output: Path, *,
              concurrency: int | None = None, progress: Progress | None = None) -> BatchSummary:
    """Run the pending items of `todo`, appending each result to `output` as it finishes.

    SIGINT and SIGTERM cancel what is outstanding (nothing half-done is written), so a rerun
    picks up exactly the ids that are missing.
    """
    summary = BatchSummary(total=todo.total, done_before=todo.done_ok + todo.done_failed,
                           failed_before=todo.done_failed)
    if not todo.pending:
        return summary
    writer = ResultWriter(output)

    def record(result: TaskResult) -> None:
        writer.write(result_record(todo.pending[result.index], result))
        if result.ok:
            summary.ok += 1
        else:
            summary.failed += 1
        if progress is not None:
            progress.update(result.ok, result.response.tokens if result.response else 0)

    fan = cluster.fan_out([item.task for item in todo.pending], concurrency=concurrency,
                          on_result=record)
    if progress is not None:
        progress.begin()
    try:
        with _cancel_on_signals(fan.cancel):
            await fan
    finally:
        writer.close()
        summary.concurrency = fan.concurrency or 0
        summary.interrupted = fan.cancelled
        if progress is not None:
            progress.finish()
    return summary


@contextlib.contextmanager
def _cancel_on_signals(cancel: Callable[[], None]) -> Iterator[None]:
    """While inside, SIGINT/SIGTERM call `cancel` instead of killing the process outright."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, cancel)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            pass
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
