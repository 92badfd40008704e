"""`sollol pull`'s progress: a rich bar per node on a terminal, a line per change otherwise."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any

import attrs
import click

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

LOG_BAR = 30
"""Width of the `[###...]` bar in log lines."""


def log_line(event: dict[str, Any]) -> str:
    """One pull event of one node as plain text: the error, the share done, or the status."""
    if event.get("error"):
        return f"error: {event['error']}"
    if event.get("total"):
        done, total = int(event.get("completed") or 0), int(event["total"])
        filled = int(LOG_BAR * done / total)
        return (f"[{'#' * filled}{'.' * (LOG_BAR - filled)}] {100 * done / total:5.1f}% "
                f"{event.get('status', '')}")
    return str(event.get("status", ""))


@attrs.define
class PullProgress:
    """Shows each node's pull events while inside `with`: live bars on a terminal (`tty`),
    otherwise a `node: text` line whenever a node's text changes."""

    tty: bool
    _lines: dict[str, str] = attrs.field(factory=dict, init=False)
    _bars: Progress | None = attrs.field(default=None, init=False)
    _tasks: dict[str, TaskID] = attrs.field(factory=dict, init=False)
    _totals: dict[str, int] = attrs.field(factory=dict, init=False)

    def __enter__(self) -> PullProgress:
        if self.tty:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
            )

            self._bars = Progress(
                TextColumn("{task.description}", markup=False), BarColumn(),
                TaskProgressColumn(), DownloadColumn(),
                TextColumn("{task.fields[status]}", markup=False),
                console=Console(), redirect_stdout=False, redirect_stderr=False)
            self._bars.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._bars is not None:
            self._bars.stop()
            self._bars = None

    def update(self, event: dict[str, Any]) -> None:
        node = str(event.get("node", "?"))
        if self._bars is None:
            text = log_line(event)
            if self._lines.get(node) != text:
                self._lines[node] = text
                click.echo(f"{node}: {text}")
            return
        if node not in self._tasks:
            self._tasks[node] = self._bars.add_task(node, total=None, status="")
        task = self._tasks[node]
        status = f"error: {event['error']}" if event.get("error") else event.get("status", "")
        if event.get("total"):
            self._totals[node] = int(event["total"])
            self._bars.update(task, total=self._totals[node],
                              completed=int(event.get("completed") or 0), status=status)
        elif status == "success":  # the last event has no sizes: fill the bar
            total = self._totals.get(node, 1)
            self._bars.update(task, total=total, completed=total, status=status)
        else:
            self._bars.update(task, status=status)
