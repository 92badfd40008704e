"""A one-line progress bar with ETA and tokens/s, for `sollol batch` (stderr)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

import attrs

BAR_WIDTH = 24
REDRAW_SECONDS = 0.1
"""Redraw at most this often on a terminal."""
LOG_STEPS = 10
"""Off a terminal (logs, pipes): one line per tenth of the work, and a last one."""


def format_seconds(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@attrs.define
class Progress:
    """Counts finished tasks of `total` and draws `done/total [###...] % failed tok/s ETA`."""

    total: int
    stream: TextIO = attrs.field(factory=lambda: sys.stderr)
    enabled: bool = True
    done: int = 0
    failed: int = 0
    tokens: int = 0
    started: float = attrs.field(factory=time.perf_counter)
    _drawn: float = 0.0
    _logged_step: int = -1
    _tty: bool = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        isatty = getattr(self.stream, "isatty", None)
        self._tty = bool(isatty and isatty())

    def begin(self) -> None:
        """Start the clock (ETA and tokens/s count from here) and draw the empty bar."""
        self.started = time.perf_counter()
        self.draw(final=False, force=True)

    def update(self, ok: bool, tokens: int = 0) -> None:
        """Count one finished task."""
        self.done += 1
        self.failed += 0 if ok else 1
        self.tokens += tokens
        self.draw()

    def line(self) -> str:
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

    def draw(self, final: bool = False, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._tty:
            if final or force or now - self._drawn >= REDRAW_SECONDS or self.done == self.total:
                self._drawn = now
                self.stream.write("\r\x1b[K" + self.line() + ("\n" if final else ""))
                self.stream.flush()
            return
        step = self.done * LOG_STEPS // self.total if self.total else LOG_STEPS
        if final or force or step > self._logged_step:
            self._logged_step = step
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def finish(self) -> None:
        """Draw the last state (a terminal's line is ended with a newline)."""
        if self._tty or self._logged_step < LOG_STEPS:
            self.draw(final=True)
