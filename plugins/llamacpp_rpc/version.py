"""The RPC protocol version our llama-server speaks, learned from the rpc-server built with it."""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

from sollol.core.processes import die_with_parent
from sollol.llamacpp import Binaries

from .procs import free_port
from .rpc_probe import ProbeError, Version, probe

_cache: dict[tuple[str, int, int], Version | None] = {}


def coordinator_version(binaries: Binaries, timeout: float = 10.0) -> Version | None:
    """Start the sibling rpc-server on a free loopback port, HELLO it, stop it (cached per file).

    The protocol version is a compile-time constant no binary prints to a pipe, and both programs
    come from one build; None when the rpc-server cannot be started.
    """
    path = Path(binaries.rpc_server)
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _cache:
        _cache[key] = _ask(path, timeout)
    return _cache[key]


def _ask(path: Path, timeout: float) -> Version | None:
    port = free_port()
    proc = subprocess.Popen(
        [str(path), "-H", "127.0.0.1", "-p", str(port), "-t", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        # the parent-death signal fires when the forking *thread* ends; that is fine here, as
        # this short-lived server is stopped before the function returns anyway
        start_new_session=True, preexec_fn=die_with_parent,
    )
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                return probe("127.0.0.1", port, timeout=2.0).version
            except ProbeError:
                time.sleep(0.05)
        return None
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
