"""What a long-running process holds, read from /proc: memory, file descriptors, TCP connections
to given ports, and the tasks of an event loop. For soak tests and benchmarks (Linux only)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Collection
from typing import Any

import attrs


@attrs.frozen
class Gauges:
    """One reading; subtract two for the growth between them."""

    rss_kib: int
    fds: int
    tasks: int
    upstream: int
    """ESTABLISHED TCP connections from this process to the watched ports."""

    def __sub__(self, other: Gauges) -> Gauges:
        return Gauges(self.rss_kib - other.rss_kib, self.fds - other.fds,
                      self.tasks - other.tasks, self.upstream - other.upstream)

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def _status_kib(pid: int | str, field: str) -> int | None:
    """A `kB` field of /proc/PID/status (`VmRSS:`, `VmHWM:`), or None when it has none."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    return None


def rss_kib(pid: int | str = "self") -> int:
    return _status_kib(pid, "VmRSS:") or 0


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size in bytes; LookupError when the process has none (a zombie), so a
    memory bound is never checked against a process that is gone."""
    kib = _status_kib(pid, "VmRSS:")
    if kib is None:
        raise LookupError(f"no VmRSS for process {pid}")
    return kib * 1024


def peak_rss_kib(pid: int | str = "self") -> int:
    """The process's resident set high-water mark (VmHWM)."""
    return _status_kib(pid, "VmHWM:") or 0


def cpu_seconds(pid: int | str = "self") -> float:
    """CPU time the process has used, user and system, all its threads."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def connections_to(ports: Collection[int], pid: int | str = "self") -> int:
    """This process's ESTABLISHED TCP connections whose remote port is one of `ports`."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as lines:
                next(lines)
                for line in lines:
                    fields = line.split()
                    remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                    if fields[3] == "01" and remote_port in ports and fields[9] in inodes:
                        count += 1
        except FileNotFoundError:
            continue
    return count


def loop_tasks(loop: asyncio.AbstractEventLoop) -> int:
    """Tasks alive on `loop` (which runs on another thread), counted on that loop."""

    async def count() -> int:
        return len(asyncio.all_tasks())

    return asyncio.run_coroutine_threadsafe(count(), loop).result(30)


def read(loop: asyncio.AbstractEventLoop | None, ports: Collection[int]) -> Gauges:
    return Gauges(rss_kib(), open_fds(), loop_tasks(loop) if loop else 0,
                  connections_to(ports))
