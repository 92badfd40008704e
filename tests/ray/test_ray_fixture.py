"""The test Ray cluster itself: distinct nodes on loopback aliases, and a stop that leaves no
raylet, GCS or worker process behind (nor touches any process it did not start)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from sollol.core.processes import command_name, running
from sollol.testing.ray_cluster import RAY_ENV, RayCluster


def test_a_stopped_cluster_leaves_no_process_and_frees_its_gcs_port(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    for key, value in RAY_ENV.items():
        monkeypatch.setenv(key, value)
    cluster = RayCluster.start(tmp_path / "ray", workers=1)
    try:
        ray.init(address=cluster.address, namespace="sollol-fixture-test",
                 log_to_driver=False, logging_level="ERROR")
        nodes = sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"])
        assert nodes == ["127.0.0.2", "127.0.0.3"]

        @ray.remote(num_cpus=0)
        class Pid:
            def pid(self) -> int:
                return os.getpid()

        # the handle is kept: an actor whose last handle is dropped is cancelled before it runs
        actor = Pid.options(resources={"node:127.0.0.3": 0.01}).remote()
        worker = ray.get(actor.pid.remote())
        pids = set(cluster.all_processes())
        ray.shutdown()
        assert worker in pids  # the actor's worker is one of the node's processes
        names = {command_name(p) for p in pids}
        assert {"raylet", "gcs_server"} <= names
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.stop()
    assert not cluster.leftovers()
    left = {p: command_name(p) for p in pids if running(p)}
    assert not left, f"processes left: {left}"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.2", cluster.gcs_port), timeout=1).close()
