"""Every command that shows what a gateway sent keeps the user's terminal safe.

Node ids, model names, errors, device names and member names come from machines the user does
not control. A real gateway (pool, sharding and join plugins, an emulated node, a real
rpc-server) sits behind a proxy that appends a hostile tail to every string of every JSON reply:
ANSI and OSC escapes, a bell, a C1 control, a bidi override, and rich markup. Each command that
takes `--gateway` is run against the proxy; none may print a raw control character, and the
views must show the tail as text. A new command with `--gateway` fails
`test_every_gateway_command_is_covered` until it is added here.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
from click.testing import CliRunner

from sollol.cli import build_cli

MODEL = "llama3.2:1b"
TAIL = "\x1b]0;owned\x07\x1b[2J[red]markup[/red]\x9b31m\u202e"
RAW = ("\x1b", "\x07", "\x9b", "\u202e")


def poisoned(value: Any) -> Any:
    """`value` with TAIL after every string in it (keys stay: they are the reply's shape)."""
    if isinstance(value, str):
        return value + TAIL
    if isinstance(value, dict):
        return {k: poisoned(v) for k, v in value.items()}
    if isinstance(value, list):
        return [poisoned(v) for v in value]
    return value


class PoisoningProxy(ThreadingHTTPServer):
    """Forwards every request to the gateway and poisons the strings of its JSON replies."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = upstream
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: PoisoningProxy

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("host", "content-length", "connection")}
        reply = httpx.request(self.command, self.server.upstream + self.path, content=body,
                              headers=headers, timeout=60)
        kind = reply.headers.get("content-type", "")
        if "ndjson" in kind:
            lines = [json.dumps(poisoned(json.loads(line)))
                     for line in reply.text.splitlines() if line.strip()]
            data = ("\n".join(lines) + "\n").encode()
        elif "json" in kind:
            data = json.dumps(poisoned(reply.json())).encode()
        else:
            data = (reply.text + TAIL).encode()
        self.send_response(reply.status_code)
        self.send_header("Content-Type", kind or "text/plain")
        self.send_header("Content-Length", str(len(data)))
        for name in ("www-authenticate",):
            if name in reply.headers:
                self.send_header(name, reply.headers[name])
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PUT = _forward

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, llama_binaries: Any) -> Iterator[str]:
    """The proxy's URL, in front of a gateway with every bundled plugin and data in each view."""
    import os

    from sollol.core.processes import ProcessGroup, free_port, wait_port
    from sollol.core.runtime import ClusterRuntime, load
    from sollol.gateway import GatewayThread
    from sollol.testing.emulator import EmulatorNode

    tmp = tmp_path_factory.mktemp("hostile")
    with pytest.MonkeyPatch.context() as env, ProcessGroup(log_dir=tmp / "logs") as group:
        for name in [n for n in os.environ if n.startswith("SOLLOL_")]:
            env.delenv(name)
        env.setenv("SOLLOL_CONFIG", str(tmp / "config.toml"))
        port = free_port()
        rpc = group.start("rpc-server", [llama_binaries.rpc_server, "-H", "127.0.0.1", "-p",
                                         str(port), "-t", "1"])
        wait_port("127.0.0.1", port, process=rpc, timeout=30)
        node = EmulatorNode(models=[MODEL]).start()
        proxy: PoisoningProxy | None = None
        gateway: GatewayThread | None = None
        try:
            config, pm = load(overrides={
                "ollama_nodes": [node.url], "model_sharding_enabled": True,
                "rpc_backends": [f"127.0.0.1:{port}"], "rpc_state_dir": str(tmp / "sharding"),
                "llama_cpp_dir": str(llama_binaries.llama_server.parent),
                "cluster_state_dir": str(tmp / "cluster"), "gateway_port": free_port()})
            gateway = GatewayThread(ClusterRuntime(config=config, pm=pm)).start()
            for prompt in ("hello", "again"):
                assert httpx.post(gateway.url + "/api/generate", timeout=30, json={
                    "model": MODEL, "prompt": prompt, "stream": False}).status_code == 200
            assert httpx.post(gateway.url + "/api/generate", timeout=30, json={
                "model": "no-such-model", "prompt": "x"}).status_code == 404
            proxy = PoisoningProxy(gateway.url)
            proxy.thread.start()
            yield proxy.url
        finally:
            if proxy is not None:
                proxy.shutdown()
                proxy.server_close()
                proxy.thread.join()
            if gateway is not None:
                gateway.stop()
            node.stop()


# Arguments for each command that takes --gateway; `None` marks one left out, with the reason.
COMMANDS: dict[str, list[str] | str] = {
    "status": [],
    "status --json": ["--json"],
    "nodes": [],
    "nodes --json": ["--json"],
    "nodes add": ["127.0.0.1:1"],
    "nodes remove": ["127.0.0.1:1"],
    "pull": [MODEL],
    "route": [MODEL],
    "rpc add": ["127.0.0.1:1"],
    "rpc remove": ["127.0.0.1:1"],
    "shard status": [],
    "shard logs": [MODEL],
    "shard unload": [MODEL],
    "cluster members": [],
    "cluster pending": [],
    "cluster discovered": [],
    "cluster token create": ["--note", "ci"],
    "cluster token list": [],
    "cluster token revoke": ["no-such-token"],
    "cluster approve": ["no-such-machine"],
    "cluster remove": ["no-such-machine"],
    "ray status": [],
    "ray status --json": ["--json"],
    "batch": "writes the model's replies, JSON-encoded, to a file (tests/cli/test_batch_*)",
}
VIEWS = ("status", "nodes", "route", "shard status", "cluster token list")
"""Commands whose output must show the hostile tail (escaped), so the check is not vacuous."""


def gateway_commands() -> set[str]:
    """Every command (or group with its own action) that takes --gateway."""
    found: set[str] = set()

    def walk(command: click.Command, path: list[str]) -> None:
        if any("--gateway" in param.opts for param in command.params):
            found.add(" ".join(path))
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, [*path, name])

    walk(build_cli(), [])
    return found


def test_every_gateway_command_is_covered() -> None:
    named = {name.removesuffix(" --json") for name in COMMANDS}
    assert gateway_commands() == named


@pytest.mark.parametrize("name", [n for n, a in COMMANDS.items() if isinstance(a, list)])
def test_no_raw_control_reaches_the_terminal(hostile: str, name: str, tmp_path: Path) -> None:
    words = name.removesuffix(" --json").split()
    args = [*words, *COMMANDS[name], "--gateway", hostile]
    result = CliRunner().invoke(build_cli(), args, env={"COLUMNS": "200"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    shown = result.output
    for char in RAW:
        assert char not in shown, f"{name} printed {char!r} raw:\n{shown!r}"
    if name in VIEWS:
        assert "\\x1b]0;owned\\x07" in shown, f"{name} did not show the node strings:\n{shown}"
        assert "[red]markup[/red]" in shown  # text, not rich markup
    if name.endswith("--json"):
        json.loads(shown)  # still JSON, the escapes inside its strings


def test_a_coordinator_log_is_printed_escaped(tmp_path: Path, capsys: Any) -> None:
    from sollol_plugins.llamacpp_rpc.log_tail import print_log

    log = tmp_path / "model.log"
    log.write_text(f"first line\nerror: grammar {TAIL!r} {TAIL}\nlast line\n")
    print_log(log, lines=2, follow=False)
    shown = capsys.readouterr().out
    assert not any(char in shown for char in RAW)
    assert shown.splitlines()[0].startswith("error: grammar")
    assert shown.splitlines()[1] == "last line" and "\\x1b]0;owned\\x07" in shown
