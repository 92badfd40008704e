"""`sollol demo` end to end as a subprocess: its report, and that nothing it started outlives it.

A watcher thread lists the demo's descendants from /proc while it runs (pid and start time, so a
reused pid is not mistaken for one of them); after the demo exits, none may be left.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sollol.core.processes import ManagedProcess, ProcessGroup

pytestmark = [pytest.mark.llamacpp, pytest.mark.slow]
DEMO_TIMEOUT = 600.0
"""Generous: a busy 2-core machine may be compiling next to the test."""


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of a live process, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), fields[0], int(fields[19])


def _descendants(root: int) -> set[tuple[int, int]]:
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            children.setdefault(stat[0], []).append((int(entry), stat[2]))
    found: set[tuple[int, int]] = set()
    todo = [root]
    while todo:
        for pid, start in children.get(todo.pop(), []):
            found.add((pid, start))
            todo.append(pid)
    return found


class Watcher:
    """Collects every descendant of a process, every 50 ms, until stopped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.seen: dict[tuple[int, int], str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid, start in _descendants(self.pid):
                # re-read each time: a child caught between fork and exec shows our cmdline
                try:
                    args = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                except OSError:
                    continue
                if args:
                    self.seen[(pid, start)] = args.decode(errors="replace")
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def survivors(self) -> list[str]:
        """Descendants seen earlier that still run (a zombie has ended: it only awaits reaping)."""
        alive = []
        for (pid, start), args in self.seen.items():
            stat = _stat(pid)
            if stat is not None and stat[2] == start and stat[1] != "Z":
                alive.append(f"{pid}: {args}")
        return alive

    def started(self, name: str) -> int:
        return sum(name in args for args in self.seen.values())


@pytest.fixture
def demo(
    processes: ProcessGroup, tmp_path: Path, llama_binaries: Any,
) -> Iterator[Any]:
    """Start `sollol demo ARGS` (unbuffered, data dir in tmp); returns (process, watcher)."""
    watchers: list[Watcher] = []

    def start(*args: str) -> tuple[ManagedProcess, Watcher]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "XDG_DATA_HOME": str(tmp_path / "data"),
               "SOLLOL_LLAMA_CPP_DIR": str(llama_binaries.llama_server.parent)}
        proc = processes.start("demo", [sys.executable, "-m", "sollol", "demo", *args], env=env)
        watcher = Watcher(proc.pid)
        watchers.append(watcher)
        return proc, watcher

    try:
        yield start
    finally:
        for watcher in watchers:
            watcher.stop()


def wait_for(proc: ManagedProcess, text: str, timeout: float = DEMO_TIMEOUT) -> str:
    """The demo's output once it contains `text` (fails with the output if it exits first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        output = proc.log_text()
        if text in output:
            return output
        if not proc.alive():
            pytest.fail(f"the demo exited ({proc.popen.returncode}) before printing {text!r}:\n"
                        f"{output}")
        time.sleep(0.05)
    pytest.fail(f"the demo did not print {text!r} in {timeout:.0f}s:\n{proc.log_text()}")


def finish(proc: ManagedProcess, watcher: Watcher) -> tuple[int, str]:
    code = proc.popen.wait(DEMO_TIMEOUT)
    watcher.stop()
    survivors = watcher.survivors()
    assert not survivors, "processes outlived the demo:\n" + "\n".join(survivors)
    return code, proc.log_text()


def test_demo_end_to_end(demo: Any) -> None:
    proc, watcher = demo()
    code, output = finish(proc, watcher)
    assert code == 0, output
    shards = re.findall(r"^  rpc-server  (\S+)$", output, re.M)
    nodes = re.findall(r"^  pool node   (\S+) ", output, re.M)
    assert len(shards) == 2 and len(nodes) == 2, output
    # both routes, with the policy's reason for each
    assert re.search(r"sollol-demo-small -> pool \(policy size-threshold\): .*below", output)
    assert re.search(r"sollol-demo-large -> sharding \(policy size-threshold\): .*at or above",
                     output)
    # every pool node served part of the batch, and every shard holds layers of the big model
    spread = re.search(r"pool spread: (.*)", output)
    assert spread and all(node in spread.group(1) for node in nodes), output
    for shard in shards:
        assert re.search(rf"rpc-server {re.escape(shard)}\s+\d+ layers \[\d", output), output
    assert re.search(r"Ollama API:  http://127\.0\.0\.1:\d+", output)
    assert re.search(r"watch it: +http://127\.0\.0\.1:\d+/dashboard", output)
    # the local cluster serves embeddings, on the node started with --embeddings
    assert f"embeddings: 2 vectors of 128 for sollol-demo-small from {nodes[0]}" in output
    assert "stopped everything the demo started" in output
    assert "FAILED" not in output
    # it really ran them: 2 rpc-servers, 2 pool nodes, 1 sharding coordinator
    assert watcher.started("ggml-rpc-server") >= 2
    assert watcher.started("llama-server") >= 3


@pytest.mark.parametrize("when", ["[3/5] gateway", "[4/5] requests", "press Ctrl-C"])
def test_demo_interrupted(demo: Any, when: str) -> None:
    """SIGINT while the gateway starts, while requests run, and in --keep's wait."""
    proc, watcher = demo("--keep")
    wait_for(proc, when)
    os.kill(proc.pid, signal.SIGINT)
    code, output = finish(proc, watcher)
    assert code == 130, output
    assert "interrupted: everything the demo started has been stopped" in output
    assert watcher.started("ggml-rpc-server") >= 2 and watcher.started("llama-server") >= 2


def test_demo_terminated_while_kept(demo: Any) -> None:
    proc, watcher = demo("--keep")
    output = wait_for(proc, "press Ctrl-C")
    url = re.search(r"OpenAI API:  (http://\S+)/v1", output)
    assert url
    os.kill(proc.pid, signal.SIGTERM)
    code, output = finish(proc, watcher)
    assert code == 130, output
    assert watcher.started("llama-server") >= 3  # the coordinator too


def test_run_local_serves_until_sigterm(
    processes: ProcessGroup, tmp_path: Path, llama_binaries: Any,
) -> None:
    """`sollol run --local 1`: the gateway serves both routes; SIGTERM stops every process."""
    import httpx

    from sollol.core.processes import free_port, wait_http

    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "XDG_DATA_HOME": str(tmp_path / "data"),
           "SOLLOL_LLAMA_CPP_DIR": str(llama_binaries.llama_server.parent)}
    proc = processes.start("run", [sys.executable, "-m", "sollol", "run", "--local", "1",
                                   "--port", str(port), "--access-log", "json"], env=env)
    watcher = Watcher(proc.pid)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/api/version", process=proc, timeout=DEMO_TIMEOUT)
        for model, route in (("sollol-demo-small", "pool"), ("sollol-demo-large", "sharding")):
            reply = httpx.post(url + "/api/generate", timeout=DEMO_TIMEOUT, json={
                "model": model, "prompt": "hello", "stream": False,
                "options": {"num_predict": 4}})
            assert reply.status_code == 200, reply.text
            assert reply.headers["x-sollol-route"] == route
        embed = httpx.post(url + "/v1/embeddings", timeout=DEMO_TIMEOUT,
                           json={"model": "sollol-demo-small", "input": "hello"})
        assert embed.status_code == 200, embed.text  # the local cluster serves embeddings
        log = proc.log_text()
        assert "point your clients at the gateway:" in log and f"OpenAI API:  {url}/v1" in log
        assert f"{url}/dashboard" in log  # the last step names the dashboard (issue 28)
        lines = [json.loads(line) for line in log.splitlines() if line.startswith('{"time"')]
        assert [(e["model"], e["route"], e["status"]) for e in lines] == [
            ("sollol-demo-small", "pool", 200), ("sollol-demo-large", "sharding", 200),
            ("sollol-demo-small", "pool", 200)]
        assert all(e["node"] and e["latency_ms"] > 0 for e in lines) and lines[0]["tokens"]
        os.kill(proc.pid, signal.SIGTERM)
        proc.popen.wait(DEMO_TIMEOUT)
    finally:
        watcher.stop()
    assert not watcher.survivors(), proc.log_text()
    assert watcher.started("ggml-rpc-server") >= 1 and watcher.started("llama-server") >= 2


def test_demo_error_stops_everything(
    processes: ProcessGroup, tmp_path: Path, llama_binaries: Any,
) -> None:
    """A pool node that cannot start: a one-line error with its log, and no process left."""
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "ggml-rpc-server").symlink_to(llama_binaries.rpc_server)
    broken = folder / "llama-server"
    broken.write_text("#!/bin/sh\necho 'error: cannot load the model' >&2\nexit 3\n")
    broken.chmod(0o755)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "XDG_DATA_HOME": str(tmp_path / "data"),
           "SOLLOL_LLAMA_CPP_DIR": str(folder)}
    proc = processes.start("demo", [sys.executable, "-m", "sollol", "demo"], env=env)
    watcher = Watcher(proc.pid)
    code, output = finish(proc, watcher)
    assert code == 1, output
    assert "cannot load the model" in output
    assert "everything the demo started has been stopped" in output
    assert "Traceback" not in output
    # the failure is quick, maybe quicker than the watcher: check the kept logs' ports too
    logs = list((tmp_path / "data").glob("sollol/local/logs/run-*/rpc-server-*.log"))
    assert len(logs) == 2, output
    for log in logs:
        with socket.socket() as sock:
            port = int(log.stem.rsplit("-", 1)[1])
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"rpc-server {port} still runs"
