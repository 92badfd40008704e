"""A real Ray cluster of several nodes on one machine, for tests: one raylet per loopback alias.

Each node is `ray start --block` in a session of its own, with its own `--node-ip-address`
(127.0.0.2, 127.0.0.3, ...: Linux answers the whole 127.0.0.0/8 on `lo`), its own temp folder
(short, under the system's: Ray's socket paths must fit in 107 bytes; removed at stop) and
explicit free ports, so it never meets another Ray on the machine. Stopping a node kills
exactly the processes it started: its session's group and every descendant (Ray's workers set up
sessions of their own), found by walking /proc before the kill, then waited for.

Ray reads `~/.ray/auth_token` when `RAY_AUTH_MODE` is unset, a file any other Ray on the machine
may write: the nodes and the test's driver run with `RAY_AUTH_MODE=disabled` (`RAY_ENV`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import attrs

from sollol.core.processes import (
    ManagedProcess,
    ProcessGroup,
    command_name,
    descendants,
    free_port,
    running,
)

__all__ = ["RAY_ENV", "RayCluster", "RayNode", "descendants", "ray_available"]

RAY_ENV: Mapping[str, str] = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    # a dead node is noticed in about 1.5 s instead of 30 s (Ray's GCS health check)
    "RAY_health_check_initial_delay_ms": "500",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "3",
    # no GPU probing and no log shipping to drivers
    "RAY_LOG_TO_DRIVER": "0",
}
"""Environment for every process of a test cluster and for its driver."""

STARTUP = 120.0


def ray_available() -> bool:
    """Whether the `ray` command is installed next to this Python (`pip install 'sollol[ray]'`)."""
    return _ray_command() is not None


def _ray_command() -> str | None:
    beside = Path(sys.executable).with_name("ray")  # the venv's, even when not on PATH
    return str(beside) if beside.exists() else shutil.which("ray")


@attrs.define
class RayNode:
    """One raylet (with the GCS on the head), run by a `ray start --block` of its own."""

    ip: str
    process: ManagedProcess
    seen: set[int] = attrs.field(factory=set)
    """Every process ever seen below it (collected at each look), for the leftover check."""

    def processes(self) -> set[int]:
        """Its live processes now (the `ray start` and all below it)."""
        now = descendants(self.process.pid) | ({self.process.pid} if self.process.alive()
                                                else set())
        self.seen |= now
        return now

    def raylet_pid(self) -> int:
        found = [p for p in self.processes() if command_name(p) == "raylet"]
        if not found:
            raise RuntimeError(f"no raylet under the node {self.ip}")
        return found[0]

    def kill_raylet(self) -> None:
        """SIGKILL its raylet alone (a crashed node); its workers then exit by themselves."""
        os.kill(self.raylet_pid(), signal.SIGKILL)

    def stop(self, timeout: float = 30.0) -> None:
        """Kill every process it started and wait until none is left."""
        pids = self.processes()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.popen.wait()
        deadline = time.monotonic() + timeout
        while self.leftovers() and time.monotonic() < deadline:
            time.sleep(0.05)  # reaped by init: no event to wait on
        if left := self.leftovers():
            raise RuntimeError(f"Ray node {self.ip}: processes left after stop: {left}")

    def leftovers(self) -> list[int]:
        """The processes it ever had that still run."""
        return sorted(p for p in self.seen if running(p))


@attrs.define
class RayCluster:
    """A head and workers on loopback aliases; `stop()` (or leaving the `with`) ends them all."""

    root: Path
    group: ProcessGroup
    num_cpus: int = 1
    temp: Path = attrs.field(factory=lambda: Path(tempfile.mkdtemp(prefix="sollol-ray-")))
    """Ray's temp folders (sockets, session logs), one per node."""
    nodes: list[RayNode] = attrs.field(factory=list)
    gcs_port: int = 0
    _next_ip: int = 2

    @classmethod
    def start(cls, root: Path, workers: int = 2, num_cpus: int = 1) -> RayCluster:
        cluster = cls(root, ProcessGroup(root / "logs"), num_cpus)
        try:
            cluster.add_node()
            for _ in range(workers):
                cluster.add_node()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @property
    def address(self) -> str:
        """The GCS address a driver passes to `ray.init` (and `ray_address`)."""
        return f"{self.nodes[0].ip}:{self.gcs_port}"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, **RAY_ENV}

    def add_node(self, **resources: int) -> RayNode:
        """Start one more node (the first is the head) and wait until the cluster lists it."""
        command = _ray_command()
        if command is None:
            raise RuntimeError("the `ray` command is missing: pip install 'sollol[ray]'")
        ip = f"127.0.0.{self._next_ip}"
        self._next_ip += 1
        temp = self.temp / ip.rsplit(".", 1)[1]
        temp.mkdir(parents=True, exist_ok=True)
        head = not self.nodes
        argv = [command, "start", "--block", "--node-ip-address", ip,
                "--num-cpus", str(self.num_cpus), "--object-store-memory", str(80 * 2**20),
                "--temp-dir", str(temp), "--disable-usage-stats",
                "--node-manager-port", str(free_port(ip)),
                "--object-manager-port", str(free_port(ip)),
                "--runtime-env-agent-port", str(free_port(ip)),
                "--dashboard-agent-listen-port", str(free_port(ip)),
                "--dashboard-agent-grpc-port", str(free_port(ip)),
                "--metrics-export-port", str(free_port(ip)),
                "--min-worker-port", "0", "--max-worker-port", "0"]
        if resources.get("num_gpus"):
            argv += ["--num-gpus", str(resources["num_gpus"])]
        if head:
            self.gcs_port = free_port(ip)
            argv += ["--head", "--port", str(self.gcs_port), "--include-dashboard", "false",
                     "--dashboard-port", str(free_port(ip))]
        else:
            argv += ["--address", self.address]
        process = self.group.start(f"ray-{ip}", argv, env=self.env)
        node = RayNode(ip, process)
        self.nodes.append(node)
        self._wait_listed(node)
        return node

    def _wait_listed(self, node: RayNode) -> None:
        """Until the GCS lists the node alive (read from its raylet's log: no driver needed)."""
        deadline = time.monotonic() + STARTUP
        marker = "Raylet of id"  # `ray start` prints it once the raylet registered
        while time.monotonic() < deadline:
            if not node.process.alive():
                raise RuntimeError(f"`ray start` for {node.ip} exited with "
                                   f"{node.process.popen.returncode}:\n"
                                   f"{node.process.log_text()[-4000:]}")
            text = node.process.log_text()
            if marker in text or "Ray runtime started" in text:
                node.processes()
                return
            time.sleep(0.1)  # its log is the only signal `ray start` gives
        raise TimeoutError(f"Ray node {node.ip} not up after {STARTUP:.0f} s:\n"
                           f"{node.process.log_text()[-4000:]}")

    def remove_node(self, node: RayNode) -> None:
        node.stop()
        self.nodes.remove(node)

    def stop(self) -> None:
        """Workers first, then the head; raise if any process of any node is left."""
        errors = []
        for node in reversed(self.nodes):
            try:
                node.stop()
            except RuntimeError as exc:
                errors.append(str(exc))
        self.group.stop_all()
        if not errors:
            shutil.rmtree(self.temp, ignore_errors=True)
        if errors:
            raise RuntimeError("; ".join(errors))

    def leftovers(self) -> list[int]:
        return [p for node in self.nodes for p in node.leftovers()]

    def __enter__(self) -> RayCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def all_processes(self) -> Iterator[int]:
        for node in self.nodes:
            yield from node.processes()
