"""Progress of `sollol batch` on stderr: a live rich bar on a terminal, log lines otherwise."""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

import attrs
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress
from rich.text import Text

BAR_WIDTH = 24
REFRESH_PER_SECOND = 10
"""How often the bar on a terminal is redrawn (the ETA and the rate move between results too)."""
DUMB_TERMINALS = ("dumb", "unknown")
LOG_STEPS = 10
"""Off a terminal (logs, pipes): one line per tenth of the work, and a last one."""


def format_seconds(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class _Failed(ProgressColumn):
    def render(self, task: Task) -> Text:
        failed = task.fields.get("failed", 0)
        return Text(f"{failed} failed", style="red") if failed else Text("")


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        elapsed = max(task.elapsed or 0.0, 1e-9)
        return Text(f"{task.fields.get('tokens', 0) / elapsed:.1f} tok/s")


@attrs.define
class Progress:
    """Counts finished tasks of `total`: `done/total [bar] % failed tok/s ETA`."""

    total: int
    stream: TextIO = attrs.field(factory=lambda: sys.stderr)
    enabled: bool = True
    done: int = 0
    failed: int = 0
    tokens: int = 0
    started: float = attrs.field(factory=time.perf_counter)
    _logged_step: int = -1
    _tty: bool = attrs.field(init=False)
    _bar: RichProgress | None = attrs.field(default=None, init=False)
    _task: TaskID | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        isatty = getattr(self.stream, "isatty", None)
        # a dumb terminal (Emacs' shell, some CI consoles) cannot redraw a line: it gets the log
        self._tty = bool(isatty and isatty()) and os.environ.get("TERM") not in DUMB_TERMINALS

    def begin(self) -> None:
        """Start the clock (ETA and tokens/s count from here) and show the empty bar."""
        self.started = time.perf_counter()
        if not self.enabled:
            return
        if not self._tty:
            self._log(force=True)
            return
        # other output (warnings, logging) is left alone rather than routed through the bar
        self._bar = RichProgress(
            MofNCompleteColumn(), BarColumn(bar_width=BAR_WIDTH), TaskProgressColumn(),
            _Failed(), _Rate(), TimeRemainingColumn(elapsed_when_finished=True),
            console=Console(file=self.stream, force_terminal=True),
            refresh_per_second=REFRESH_PER_SECOND, redirect_stdout=False, redirect_stderr=False)
        self._task = self._bar.add_task("batch", total=self.total, failed=0, tokens=0)
        self._bar.start()

    def update(self, ok: bool, tokens: int = 0) -> None:
        """Count one finished task."""
        self.done += 1
        self.failed += 0 if ok else 1
        self.tokens += tokens
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=self.done, failed=self.failed,
                             tokens=self.tokens)
        elif self.enabled and not self._tty:
            self._log()

    def line(self) -> str:
        """The state as one plain line (what a log gets)."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        share = self.done / self.total if self.total else 1.0
        filled = int(share * BAR_WIDTH)
        parts = [f"{self.done}/{self.total}", f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}]",
                 f"{share:4.0%}"]
        if self.failed:
            parts.append(f"{self.failed} failed")
        parts.append(f"{self.tokens / elapsed:.1f} tok/s")
        if self.done < self.total:
            eta = (self.total - self.done) * elapsed / self.done if self.done else None
            parts.append(f"ETA {format_seconds(eta)}" if eta is not None else "ETA --:--")
        else:
            parts.append(f"in {format_seconds(elapsed)}")
        return "  ".join(parts)

    def _log(self, final: bool = False, force: bool = False) -> None:
        step = self.done * LOG_STEPS // self.total if self.total else LOG_STEPS
        if final or force or step > self._logged_step:
            self._logged_step = step
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def finish(self) -> None:
        """Show the last state: a terminal's bar stays on screen, a log gets its last line."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif self.enabled and not self._tty and self._logged_step < LOG_STEPS:
            self._log(final=True)
