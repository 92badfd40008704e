"""`sollol rpc serve`: ggml-rpc-server as a child whose client connections time out.

ggml-rpc-server serves one client at a time and sets no timeout. When its coordinator's host
vanishes without closing the connection (a cut link), it waits on that connection for good and
never serves anyone again, even once the link is back. Its parent here turns on keepalive and
`TCP_USER_TIMEOUT` on each client connection (see `links`): a client silent for `timeout` seconds
is dropped by the kernel, the rpc-server logs "recv failed" and accepts the next client.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence

from sollol.core.processes import server_child

from . import links
from .sockets import established_sockets

POLL = 0.5
"""Seconds between looks for new client connections (a /proc read; no traffic)."""


def serve(argv: Sequence[str], env: Mapping[str, str], timeout: float,
          warn: Callable[[str], None]) -> int:
    """Run `argv` until it exits, watching its client connections; its exit status (128 + the
    signal's number if a signal ended it). SIGINT, SIGTERM and SIGHUP are passed on to it."""
    child = subprocess.Popen(list(argv), env=dict(env), preexec_fn=server_child)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    armed: set[str] = set()
    watching = True
    while True:
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = child.wait(POLL)
            return code if code >= 0 else 128 - code
        if not watching:
            continue
        try:
            armed &= set(established_sockets(child.pid))  # forget closed connections
            armed |= links.arm(child.pid, None, timeout, armed)
        except links.CannotArm as exc:
            watching = False
            warn(f"cannot set a timeout on the rpc-server's client connections ({exc}): after "
                 "a cut link it may wait on its dead client until restarted")
