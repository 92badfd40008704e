"""`sollol status`: a running gateway's picture in the terminal, as tables or JSON."""

from __future__ import annotations

import json

import httpx
import pytest
from click.testing import CliRunner

from sollol.cli import build_cli
from sollol.core.processes import free_port

MODEL = "llama3.2:1b"


@pytest.fixture
def busy_gateway(emulator, pool_gateway):
    nodes = [emulator(), emulator()]
    gateway = pool_gateway(*(n.url for n in nodes), plugins=["ollama_pool"])
    for _ in range(3):
        assert httpx.post(gateway.url + "/api/generate", timeout=30, json={
            "model": MODEL, "prompt": "hello", "stream": False}).status_code == 200
    assert httpx.post(gateway.url + "/api/generate", timeout=30, json={
        "model": "no-such-model", "prompt": "x"}).status_code == 404
    return gateway, nodes


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(build_cli(), ["status", *args], env={"COLUMNS": "200", **(env or {})})


def test_json_has_nodes_totals_and_recent_requests(busy_gateway) -> None:
    gateway, nodes = busy_gateway
    result = run("--json", "--gateway", gateway.url)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {n["id"] for n in data["nodes"]} == {n.address for n in nodes}
    assert all(n["health"] == "healthy" for n in data["nodes"])
    assert data["requests"]["requests"] == 4 and data["requests"]["errors"] == 1
    assert [r["status"] for r in data["recent"]] == [200, 200, 200, 404]
    served = sum(n["stats"]["requests"] for n in data["nodes"] if n["stats"])
    assert served == 3


def test_tables_name_every_node_and_the_requests(busy_gateway) -> None:
    gateway, nodes = busy_gateway
    result = run("--gateway", gateway.url)
    assert result.exit_code == 0, result.output
    for node in nodes:
        assert node.address in result.output
    assert "healthy" in result.output
    assert "4 requests (1 errors)" in result.output
    assert "no-such-model" in result.output and "404" in result.output


def test_watch_refreshes_until_its_count(busy_gateway) -> None:
    gateway, _nodes = busy_gateway
    result = run("--watch", "--json", "--count", "3", "--interval", "0.2",
                 "--gateway", gateway.url)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert len(lines) == 3 and all(line["nodes"] for line in lines)
    live = run("--watch", "--count", "2", "--interval", "0.2", "--gateway", gateway.url)
    assert live.exit_code == 0, live.output
    assert "nodes" in live.output


def test_the_gateway_address_comes_from_the_config(busy_gateway) -> None:
    gateway, _nodes = busy_gateway
    result = run("--json", env={"SOLLOL_GATEWAY_PORT": str(gateway.port)})
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["nodes"]


def test_no_gateway_is_a_message_and_a_non_zero_exit() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run("--gateway", url)
    assert result.exit_code == 1
    assert f"no gateway answers at {url}" in result.output
    assert "Traceback" not in result.output
    watch = run("--watch", "--json", "--count", "2", "--interval", "0.2", "--gateway", url)
    assert watch.exit_code == 0  # a watch keeps trying: the gateway may be restarting
    assert all("no gateway answers" in json.loads(line)["error"]
               for line in watch.output.splitlines())


def test_something_else_at_the_address_is_named(emulator) -> None:
    node = emulator()  # an Ollama server, not a SOLLOL gateway
    result = run("--gateway", node.url)
    assert result.exit_code == 1
    assert f"{node.url} answered, but it is not a SOLLOL gateway (HTTP 404" in result.output


@pytest.mark.parametrize("columns", ["80", "60"])
def test_a_narrow_or_piped_terminal_never_cuts_a_word(busy_gateway, columns: str) -> None:
    """Issue 28, finding 9: at 80 columns (or piped) the tables' free-text columns were
    squeezed to two letters; rows that do not fit become lines, words kept whole."""
    gateway, nodes = busy_gateway
    result = CliRunner().invoke(build_cli(), ["status", "--gateway", gateway.url],
                                env={"COLUMNS": columns})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(map(len, lines)) <= int(columns)
    words = result.output.split()
    for node in nodes:
        assert node.address in words
    assert MODEL in words and "no-such-model" in words
    assert "4 requests (1 errors)" in " ".join(words)
