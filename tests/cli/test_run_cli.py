"""`sollol run` on a busy port (one line, exit code 3), and the access log's lines."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys

import httpx

from sollol.cli.run import PORT_BUSY_EXIT
from sollol.gateway.access_log import AccessLog
from sollol.models import RouteEvent


def test_a_busy_port_is_one_line_and_exit_3() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "sollol", "run", "--port", str(port)],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == PORT_BUSY_EXIT == 3
    lines = done.stderr.strip().splitlines()
    assert lines == [f"Error: port {port} on 127.0.0.1 is in use (another `sollol run`? "
                     "`sollol status` tells); pick another with --port or gateway_port"]
    assert "Traceback" not in done.stderr + done.stdout


def test_access_log_lines_per_request(emulator, pool_gateway) -> None:
    from sollol.core.runtime import ClusterRuntime
    from sollol.gateway import GatewayThread

    node = emulator(models=["chat:1b"])
    out = io.StringIO()
    cluster = ClusterRuntime.from_config(overrides={"ollama_nodes": [node.address]})
    cluster.pm.register(AccessLog("json", out), name="sollol-access-log")
    gw = GatewayThread(cluster).start()
    try:
        ok = httpx.post(gw.url + "/api/chat", json={
            "model": "chat:1b", "stream": False, "messages": [{"role": "user", "content": "x"}]})
        assert ok.status_code == 200
        missing = httpx.post(gw.url + "/v1/chat/completions", json={
            "model": "chat:1", "messages": [{"role": "user", "content": "x"}]})
        assert missing.status_code == 404
    finally:
        gw.stop()
    first, second = [json.loads(line) for line in out.getvalue().splitlines()]
    assert (first["model"], first["route"], first["node"], first["status"]) == (
        "chat:1b", "pool", node.address, 200)
    assert first["tokens"] == 12 and first["latency_ms"] > 0 and first["api"] == "ollama"
    assert (second["model"], second["status"], second["api"]) == ("chat:1", 404, "openai")
    assert "did you mean" in second["error"]


def test_access_log_text_line() -> None:
    event = RouteEvent(model="m", endpoint="chat", api="openai", route="pool", policy="mode",
                       reason="r", backend="10.0.0.5:11434", status=200, ok=True,
                       duration_s=0.25, tokens=7, time=0.0)
    assert AccessLog("text").line(event) == (
        "1970-01-01T00:00:00.000Z 200 openai/chat model=m route=pool node=10.0.0.5:11434 "
        "250.0ms tokens=7 attempts=1")
