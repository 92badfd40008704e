"""`sollol run` as a process, and clean shutdown: in-flight requests finish within the grace
period or are told why they were cut, and plugin shutdown hooks run."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading

import httpx
import pytest
from click.testing import CliRunner

from sollol.cli import build_cli
from sollol.cli.run import is_loopback
from sollol.config import load_config
from sollol.core.plugin_manager import get_plugin_manager
from sollol.core.processes import free_port, wait_http
from sollol.core.runtime import ClusterRuntime
from sollol.gateway import GatewayThread
from sollol.hookspecs import hookimpl
from sollol.testing.static_route import RoutesPlugin, StaticRoute, Upstream

cli = build_cli()

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_run_serves_then_stops_cleanly_on_a_signal(processes, isolated_config, stop_signal):
    isolated_config.parent.mkdir(parents=True, exist_ok=True)
    isolated_config.write_text("plugins = []\n")  # no plugins: the gateway alone
    port = free_port()
    proc = processes.start("sollol-run", [sys.executable, "-m", "sollol", "run", "--port",
                                          str(port)], env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/api/version", process=proc, timeout=60)
    assert httpx.get(url).text == "Ollama is running"
    reply = httpx.post(url + "/api/chat", json=CHAT)
    assert reply.status_code == 503 and "no plugin provides it" in reply.json()["error"]
    os.kill(proc.pid, stop_signal)
    assert proc.popen.wait(timeout=30) == 0
    log = proc.log_text()
    assert "sollol gateway on http://127.0.0.1" in log and "sollol gateway stopped" in log
    assert "Traceback" not in log


def test_run_rejects_unknown_plugins_and_bad_ports():
    runner = CliRunner()
    result = runner.invoke(cli, ["run", "--plugin", "no-such-plugin"])
    assert result.exit_code == 2
    assert "'plugins'" in result.output and "no-such-plugin" in result.output
    result = runner.invoke(cli, ["run", "--port", "70000"])
    assert result.exit_code == 2


def test_loopback_detection_for_the_bind_warning():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert is_loopback("127.0.0.2") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    assert not is_loopback("myhost.example")


class ShutdownRecorder:
    def __init__(self):
        self.calls = []

    @hookimpl
    def sollol_shutdown(self, cluster):
        self.calls.append(cluster)


def _gateway(node, grace):
    pm = get_plugin_manager(load_entry_points=False)
    pm.register(RoutesPlugin([StaticRoute("pool", [Upstream("n", node.url, node.api, ("m",))])]))
    recorder = ShutdownRecorder()
    pm.register(recorder)
    cluster = ClusterRuntime(config=load_config(), pm=pm)
    return GatewayThread(cluster, grace=grace).start(), recorder


class ErrorLog(logging.Handler):
    """uvicorn's error log while attached (uvicorn's own logging config bypasses caplog)."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages = []
        logging.getLogger("uvicorn.error").addHandler(self)

    def emit(self, record):
        self.messages.append(record.getMessage())

    def close(self):
        logging.getLogger("uvicorn.error").removeHandler(self)
        super().close()


def _stream_while_stopping(gw):
    """Start a stream, stop the gateway once its first chunk is in; return all lines."""
    lines = []
    with httpx.stream("POST", gw.url + "/api/chat", json=CHAT, timeout=30) as reply:
        stopper = None
        for line in reply.iter_lines():
            if line.strip():
                lines.append(json.loads(line))
            if stopper is None:
                stopper = threading.Thread(target=gw.stop)
                stopper.start()
    stopper.join(30)
    return lines


def test_in_flight_stream_finishes_within_the_grace_period(scripted_node):
    node = scripted_node(api="ollama", pause_after_first=1.0)
    gw, recorder = _gateway(node, grace=20.0)
    lines = _stream_while_stopping(gw)
    assert lines[-1]["done"] is True and "error" not in lines[-1]
    assert len(recorder.calls) == 1  # plugin shutdown hooks ran


def test_stream_past_the_grace_period_is_told_why_it_was_cut(scripted_node):
    node = scripted_node(api="ollama", pause_after_first=5.0)
    gw, recorder = _gateway(node, grace=0.5)
    errors = ErrorLog()
    lines = _stream_while_stopping(gw)
    errors.close()
    assert lines[-1] == {"error": "stream cut: the gateway is shutting down"}
    assert len(recorder.calls) == 1
    # A request cut on purpose is not a crash: no "Exception in ASGI application" traceback.
    assert not [m for m in errors.messages if m.startswith("Exception in")]


def test_second_stop_signal_cuts_streams_at_once_and_still_runs_shutdown_hooks(scripted_node):
    from sollol.gateway.server import _ForegroundServer

    node = scripted_node(api="ollama", pause_after_first=5.0)
    pm = get_plugin_manager(load_entry_points=False)
    pm.register(RoutesPlugin([StaticRoute("pool", [Upstream("n", node.url, "ollama",
                                                            ("m",))])]))
    recorder = ShutdownRecorder()
    pm.register(recorder)
    gw = GatewayThread(ClusterRuntime(config=load_config(), pm=pm), grace=30.0)
    gw.server = _ForegroundServer(gw.server.config, gw.gateway)  # what `sollol run` serves with
    gw.start()
    errors = ErrorLog()
    lines = []
    with httpx.stream("POST", gw.url + "/api/chat", json=CHAT, timeout=30) as reply:
        for line in reply.iter_lines():
            if line.strip():
                lines.append(json.loads(line))
            if len(lines) == 1:
                gw.server.handle_exit(signal.SIGINT, None)
                gw.server.handle_exit(signal.SIGINT, None)  # the impatient second Ctrl-C
    gw.stop()
    errors.close()
    assert lines[-1] == {"error": "stream cut: the gateway is shutting down"}
    assert len(recorder.calls) == 1  # shutdown hooks ran although the stop was forced
    assert not [m for m in errors.messages if m.startswith("Exception in")]
