"""A `sollol run` gateway over a fleet of emulated nodes in another process, and what it costs:
CPU time and memory read from /proc, probes counted by the nodes. For the health-probe soak test
and `bench/idle.py` (Linux only)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence

import attrs
import httpx

from sollol.core.processes import ManagedProcess, ProcessGroup, free_port, wait_http
from sollol.testing import gauges


@attrs.frozen
class Reading:
    """One look at the gateway process and the nodes; subtract two for what happened between."""

    at: float
    cpu_s: float
    rss_kib: int
    peak_kib: int
    probes: int
    """`GET /api/ps` requests all nodes have had (one per Ollama probe)."""

    def __sub__(self, other: Reading) -> Reading:
        return Reading(self.at - other.at, self.cpu_s - other.cpu_s,
                       self.rss_kib - other.rss_kib, self.peak_kib - other.peak_kib,
                       self.probes - other.probes)

    @property
    def ms_per_probe(self) -> float:
        return 1000 * self.cpu_s / self.probes if self.probes else float("nan")

    @property
    def core_share(self) -> float:
        """CPU used as a share of one core over the time between two readings."""
        return self.cpu_s / self.at if self.at else float("nan")


def start_fleet(group: ProcessGroup, count: int, model: str = "m",
                timeout: float = 120.0) -> list[str]:
    """`count` emulated Ollama nodes in one process; their addresses once all accept."""
    proc = group.start(f"fleet-{count}", [sys.executable, "-m", "sollol.testing.emulator_fleet",
                                          "--count", str(count), "--model", model])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in proc.log_text().splitlines():
            if line.startswith("{"):
                return list(json.loads(line)["addresses"])
        if not proc.alive():
            raise RuntimeError(f"the emulator fleet exited: {proc.log_text()[-2000:]}")
        time.sleep(0.1)
    raise TimeoutError(f"the emulator fleet of {count} did not start within {timeout:g}s")


def start_gateway(group: ProcessGroup, nodes: Sequence[str], interval: float,
                  probe_timeout: float = 2.0, name: str = "gateway",
                  env: dict[str, str] | None = None) -> tuple[str, ManagedProcess]:
    """`sollol run` over `nodes` (pool route only) probing every `interval` seconds; `env`
    adds to its environment."""
    port = free_port()
    env = {**os.environ, "SOLLOL_OLLAMA_NODES": ",".join(nodes),
           "SOLLOL_HEALTH_INTERVAL": str(interval),
           "SOLLOL_POOL_HEALTH_TIMEOUT": str(probe_timeout),
           "SOLLOL_MODEL_SHARDING_ENABLED": "false", **(env or {})}
    proc = group.start(name, [sys.executable, "-m", "sollol", "run", "--port", str(port)],
                       env=env)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/api/version", process=proc, timeout=120)
    return url, proc


def probes(nodes: Sequence[str], client: httpx.Client) -> int:
    """Probes the nodes have answered so far (their `/api/ps` requests: every probe asks it)."""
    total = 0
    for node in nodes:
        stats = client.get(f"http://{node}/_emulator/stats").json()
        total += int(stats["requests"].get("/api/ps", 0))
    return total


def read(proc: ManagedProcess, nodes: Sequence[str], client: httpx.Client) -> Reading:
    return Reading(time.monotonic(), gauges.cpu_seconds(proc.pid), gauges.rss_kib(proc.pid),
                   gauges.peak_rss_kib(proc.pid), probes(nodes, client))


def wait_until_up(url: str, count: int, timeout: float = 120.0) -> None:
    """Until the gateway reports `count` healthy nodes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        nodes = httpx.get(url + "/sollol/nodes", timeout=30).json()["nodes"]
        if sum(n["health"] == "healthy" for n in nodes) == count:
            return
        time.sleep(0.2)
    raise TimeoutError(f"not all {count} nodes were healthy within {timeout:g}s")
