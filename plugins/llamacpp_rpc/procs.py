"""Child processes that never outlive the gateway: own session, parent-death signal, pid files.

Each coordinator gets a pid file naming the gateway that started it. SIGINT/SIGTERM stop
coordinators through the route's `stop()`; a gateway killed outright is covered by the
parent-death signal, and `reap_orphans()` at the next start catches anything that survived both.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
from pathlib import Path

from sollol.core.processes import die_with_parent, free_port, terminate

__all__ = ["bound_log", "free_port", "kill", "read_pid_files", "reap_orphans", "spawn", "terminate",
           "write_pid_file"]

log = logging.getLogger("sollol.sharding")


def spawn(argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `argv` in its own session with output appended to `log_path`.

    Linux sends the parent-death signal when the *thread* that forked the child exits, so call
    this from the event loop's thread, never from a short-lived worker thread.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True, preexec_fn=die_with_parent,
        )


def bound_log(path: Path, max_bytes: int) -> bool:
    """Past `max_bytes`, copy the log to `<name>.1` (dropping the copy before) and empty it;
    True when it did. A child that appends (O_APPEND, as `spawn` opens it) writes on from the
    start of the emptied file."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
        shutil.copyfile(path, path.with_name(path.name + ".1"))
        os.truncate(path, 0)
    except OSError:
        return False
    return True


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL a child's process group now (it cannot exit cleanly: e.g. a dead rpc-server
    link); `terminate` then only reaps it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def write_pid_file(folder: Path, proc: subprocess.Popen, record: dict) -> Path:
    """Record a child (and the gateway that owns it) so a later start can reap it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{proc.pid}.json"
    data = {**record, "pid": proc.pid, "owner_pid": os.getpid(), "argv": proc.args,
            "start_ticks": _start_ticks(proc.pid)}
    path.write_text(json.dumps(data, indent=2))
    return path


def read_pid_files(folder: Path) -> list[dict]:
    """Records of coordinators whose process is still the one we started."""
    records = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _same_process(data):
            records.append({**data, "pid_file": str(path)})
    return records


def reap_orphans(folder: Path) -> list[int]:
    """Stop coordinators left by a gateway that is gone; remove stale pid files. Returns pids."""
    reaped = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            continue
        if _same_process(data) and alive(data.get("owner_pid")):
            continue  # another running gateway owns it
        if _same_process(data):
            log.warning("stopping orphaned coordinator pid %s (%s)", data["pid"],
                        data.get("model", "?"))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(data["pid"], signal.SIGKILL)
            reaped.append(data["pid"])
        path.unlink(missing_ok=True)
    return reaped


def alive(pid: object) -> bool:
    """Whether `pid` (as read from a pid file: any JSON value) names a live process."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _start_ticks(pid: int) -> int | None:
    """The process start time from /proc: with the pid it identifies a process (pids recycle)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text.rpartition(")")[2].split()[19])


def _same_process(data: dict) -> bool:
    pid = data.get("pid")
    return alive(pid) and data.get("start_ticks") is not None \
        and _start_ticks(pid) == data.get("start_ticks")
