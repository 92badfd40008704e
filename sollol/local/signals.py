"""Turn SIGTERM and SIGHUP into KeyboardInterrupt, so `finally` blocks stop what was started.

Python's default SIGTERM handling ends the process without unwinding the stack: every process
the local cluster started would outlive it (until the parent-death signal, which only covers
the thread that forked them).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def termination_as_interrupt() -> Iterator[None]:
    """Inside the block, SIGTERM/SIGHUP raise KeyboardInterrupt (main thread, default handlers
    only: a handler someone else installed is left alone)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    for sig, handler in previous.items():
        if handler in (signal.SIG_DFL, None):
            signal.signal(sig, _interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Ignore SIGINT/SIGTERM/SIGHUP while cleaning up (a second Ctrl-C must not leave orphans).

    The cleanup it guards is bounded by timeouts; SIGKILL still works, and then the children's
    parent-death signal ends them.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGINT, *_SIGNALS)
    previous = {s: signal.getsignal(s) for s in signals}
    for sig in signals:
        signal.signal(sig, signal.SIG_IGN)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)
