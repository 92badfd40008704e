"""Start and stop child processes: own sessions, death with the parent, no orphans."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs
import httpx

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def die_with_parent() -> None:
    """preexec_fn: ask Linux to SIGKILL the child when the process that started it dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def server_child() -> None:
    """preexec_fn for a server: `die_with_parent`, and SIGPIPE ignored (kept across exec), so
    a server whose client dies while it answers gets EPIPE and serves on. ggml-rpc-server sends
    without MSG_NOSIGNAL: with SIGPIPE's default it dies whenever a coordinator is killed
    mid-reply (a startup timeout, a cut-off)."""
    die_with_parent()
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (children, their children, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (exited, waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def command_name(pid: int) -> str:
    """Process `pid`'s command name (/proc's `comm`, at most 15 characters), or "" if gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def ignores_sigpipe(pid: int) -> bool:
    """Whether process `pid` ignores SIGPIPE (its `SigIgn` mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGPIPE - 1)))
    return False


def terminate(popen: subprocess.Popen[bytes], timeout: float = 5.0) -> int | None:
    """SIGTERM a child's process group, SIGKILL it if it lingers, and reap it.

    The child must lead its own session (`start_new_session=True`), so the group is its own.
    """
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGTERM)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
    else:  # the leader is gone; make sure nothing it spawned survives
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
    return popen.returncode


@attrs.define
class ManagedProcess:
    """A child process in its own session, with its output in a log file."""

    name: str
    args: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM the whole process group, then SIGKILL it if it lingers; reap it."""
        return terminate(self.popen, timeout)

    def kill(self) -> None:
        """SIGKILL at once (a crash, for fault tests)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()


@attrs.define
class ProcessGroup:
    """Owns the processes it starts; `stop_all()` (or leaving the `with`) ends every one."""

    log_dir: Path
    processes: list[ManagedProcess] = attrs.field(factory=list)

    def start(
        self, name: str, args: Sequence[str | os.PathLike[str]], *,
        env: dict[str, str] | None = None, cwd: Path | None = None,
    ) -> ManagedProcess:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        argv = [str(a) for a in args]
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=cwd, start_new_session=True, preexec_fn=server_child,
            )
        proc = ManagedProcess(name=name, args=argv, log_path=log_path, popen=popen)
        self.processes.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def wait_http(
    url: str, *, process: ManagedProcess | None = None, timeout: float = 60.0,
    status: int = 200, headers: dict[str, str] | None = None,
) -> None:
    """Poll `url` (sending `headers`) until it answers `status`; fail early with the log if
    `process` dies."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if process is not None and not process.alive():
            msg = (f"{process.name} exited with {process.popen.returncode} before {url} was "
                   f"ready; log:\n{process.log_text()[-4000:]}")
            raise RuntimeError(msg)
        try:
            # not via $http_proxy
            response = httpx.get(url, timeout=2.0, trust_env=False, headers=headers)
            if response.status_code == status:
                return
            last = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s ({last})")


def wait_port(host: str, port: int, *, process: ManagedProcess | None = None,
              timeout: float = 30.0) -> None:
    """Wait until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and not process.alive():
            tail = process.log_text()[-4000:]
            msg = f"{process.name} exited before {host}:{port} opened:\n{tail}"
            raise RuntimeError(msg)
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} not open after {timeout:.0f}s")


@contextlib.contextmanager
def process_group(log_dir: Path) -> Iterator[ProcessGroup]:
    """A ProcessGroup that is always stopped, even on errors."""
    group = ProcessGroup(log_dir=log_dir)
    try:
        yield group
    finally:
        group.stop_all()
