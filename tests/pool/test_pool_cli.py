"""`sollol nodes` and `sollol pull` against emulated nodes (directly and through a gateway)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from sollol.cli import build_cli
from sollol.testing.emulator import Faults


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(build_cli(), list(args), env=env, catch_exceptions=False)


def test_nodes_direct_probe_table_and_json(emulator):
    up = emulator(models=["m"])
    down = emulator(models=["m"], faults=Faults(refuse=True))
    env = {"OLLAMA_HOSTS": f"{up.address},{down.address}"}
    result = run("nodes", "--direct", env=env)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "# direct probe"
    assert lines[1].split() == ["NODE", "KIND", "HEALTH", "EJECTED", "UNTIL", "IN", "FLIGHT",
                                "LOADED", "MEMORY", "SPEED"]
    assert up.address in lines[2] and "healthy" in lines[2] and "m:latest" in lines[2]
    assert down.address in lines[3] and "down" in lines[3]
    assert "connection failed" in result.output
    data = json.loads(run("nodes", "--direct", "--json", env=env).output)
    assert [n["health"] for n in data["nodes"]] == ["healthy", "down"]


def test_nodes_falls_back_when_no_gateway_answers(emulator):
    up = emulator(models=["m"])
    result = run("nodes", "--gateway", "http://127.0.0.1:9", env={"OLLAMA_HOSTS": up.address})
    assert "direct probe (no gateway at http://127.0.0.1:9)" in result.output


def test_nodes_from_a_running_gateway(emulator, pool_gateway):
    node = emulator(models=["m"])
    gw = pool_gateway(node.address)
    data = json.loads(run("nodes", "--json", "--gateway", gw.url).output)
    assert data["source"] == f"gateway {gw.url}"
    assert data["nodes"][0]["id"] == node.address


def test_pull_on_all_and_named_nodes(emulator):
    a, b = emulator(models=["m"]), emulator(models=["m"])
    env = {"OLLAMA_HOSTS": f"{a.address},{b.address}"}
    result = run("pull", "newmodel", env=env)
    assert result.exit_code == 0, result.output
    assert f"{a.address}: success" in result.output and f"{b.address}: success" in result.output
    assert "pulled newmodel on 2 node(s)" in result.output
    assert a.stats()["requests"]["/api/pull"] == 1
    result = run("pull", "only-b", "--node", b.address, env=env)
    assert result.exit_code == 0 and "on 1 node(s)" in result.output
    assert a.stats()["requests"]["/api/pull"] == 1 and b.stats()["requests"]["/api/pull"] == 2


def test_pull_failure_and_unknown_node(emulator):
    a = emulator(models=["m"], library=["m"])
    env = {"OLLAMA_HOSTS": a.address}
    result = run("pull", "absent", env=env)
    assert result.exit_code == 1 and "file does not exist" in result.output
    result = run("pull", "m", "--node", "10.1.1.1:1", env=env)
    assert result.exit_code == 1 and "not configured" in result.output


def test_a_non_gateway_answering_on_the_gateway_port_is_not_trusted() -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from sollol_plugins.ollama_pool.pool_commands import _gateway_nodes

    class NotJson(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html>some other web server</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotJson)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert _gateway_nodes(f"http://127.0.0.1:{server.server_port}") is None
    finally:
        server.shutdown()
        server.server_close()


SNAPSHOT = {"nodes": [
    {"id": "127.0.0.1:11434", "kind": "ollama", "health": "healthy", "in_flight": 1, "limit": 4,
     "loaded": ["llama3:8b", "[bold]odd"], "memory_total": 8 * 2**30, "memory_free": 3 * 2**30,
     "tokens_per_second": 41.2},
    {"id": "[::1]:11434", "kind": "ollama", "api": "openai", "health": "down", "in_flight": 0,
     "limit": 4, "detail": "connection failed"},
]}


def test_the_node_table_is_plain_aligned_text_off_a_terminal() -> None:
    from sollol_plugins.ollama_pool.pool_commands import render

    lines = render(SNAPSHOT).splitlines()
    assert lines[1].split()[:5] == ["127.0.0.1:11434", "ollama", "healthy", "-", "1/4"]
    assert "llama3:8b, [bold]odd" in lines[1]  # a name is never read as markup
    assert "3.0G/8.0G free" in lines[1] and lines[1].endswith("41.2 tok/s")
    assert lines[2].startswith("[::1]:11434  ") and lines[2].split()[1:3] == ["openai", "down"]
    assert lines[0].index("HEALTH") == lines[1].index("healthy") == lines[2].index("down")
    assert lines[3:] == ["  [::1]:11434: connection failed"]
    assert all(line == line.rstrip() and "\x1b" not in line for line in lines)


def test_the_node_table_on_a_terminal_shows_health_in_colour(fake_terminal) -> None:
    from sollol_plugins.ollama_pool.pool_commands import show

    screen = fake_terminal(160)
    show(SNAPSHOT)
    text = screen.getvalue()
    assert "\x1b[32mhealthy" in text and "\x1b[31mdown" in text
    assert "[bold]odd" in text and "[::1]:11434: connection failed" in text
