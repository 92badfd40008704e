"""`sollol route MODEL`: the decision and its numbers, from a local cluster or a gateway."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tomli_w
from click.testing import CliRunner
from sollol_plugins.policies.command import ask_gateway, render, route_command
from test_policies_cluster import RoutesPlugin
from test_policies_support import node, rpc

import sollol.core.loading
from sollol.cli import build_cli
from sollol.core.plugin_manager import SollolPluginManager, get_plugin_manager
from sollol.errors import SollolError
from sollol.testing.tiny_models import make_tiny_model


@pytest.fixture
def routes_plugin(monkeypatch: pytest.MonkeyPatch) -> Iterator[RoutesPlugin]:
    """Clusters built from config get our policies plus two routes with fixed figures."""
    plugin = RoutesPlugin()
    plugin.pool.backends = [node("a", models=["llama3:latest"], free=2)]
    plugin.sharding.backends = [rpc("r1", 4, port=1), rpc("r2", 4, port=2)]

    def manager(allow=None, block=()) -> SollolPluginManager:
        pm = get_plugin_manager(allow=["policies"])
        pm.register(plugin, name="test-routes")
        return pm

    monkeypatch.setattr(sollol.core.loading, "get_plugin_manager", manager)
    yield plugin


def write_config(path: Path, **values: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    values = {"model_sharding_enabled": True, "task_distribution_enabled": True, **values}
    path.write_text(tomli_w.dumps(values))
    return path


def test_route_explains_a_decision_with_its_numbers(
    routes_plugin: RoutesPlugin, isolated_config: Path, tmp_path: Path,
) -> None:
    model = make_tiny_model(tmp_path / "tiny.gguf")
    write_config(isolated_config, routing_policy="memory-fit",
                 policy_settings={"memory-fit": {"default_context": 1024}})
    routes_plugin.pool.backends = [node("a", models=[str(model)], free=1 / 1024)]

    result = CliRunner().invoke(route_command, [str(model), "--ctx", "512"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"{model} -> sharding, by policy memory-fit"
    assert "the most free memory on a pool node is 1.0 MiB (node a)" in lines[1]
    assert "    context: 512" in lines
    assert f"    weights_bytes: {model.stat().st_size} (1.1 MiB)" in lines

    result = CliRunner().invoke(route_command, [str(model), "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert (answer["route"], answer["policy"]) == ("sharding", "memory-fit")
    assert answer["numbers"]["context"] == 1024
    assert answer["numbers"]["sharding_free_bytes"] == 8 * 2**30


def test_route_503_prints_the_numbers_and_exits_1(
    routes_plugin: RoutesPlugin, isolated_config: Path,
) -> None:
    write_config(isolated_config, routing_policy="size-threshold",
                 policy_settings={"size-threshold": {"unknown": "error"}})
    result = CliRunner().invoke(route_command, ["llama3", "--json"])
    assert result.exit_code == 1
    answer = json.loads(result.output)
    assert answer["status"] == 503
    assert "parameter count of llama3 is unknown" in answer["error"]
    assert answer["numbers"]["unknown_fallback"] == "error"

    result = CliRunner().invoke(route_command, ["llama3"])
    assert result.exit_code == 1
    assert result.output.startswith("llama3: no route (503)\n  the parameter count of llama3")


def test_route_reports_a_bad_setting_as_a_usage_error(
    routes_plugin: RoutesPlugin, isolated_config: Path,
) -> None:
    write_config(isolated_config, routing_policy="memory-fit",
                 policy_settings={"memory-fit": {"reserve": "lots"}})
    result = CliRunner().invoke(route_command, ["llama3"])
    assert result.exit_code == 2
    assert "policy_settings.memory-fit.reserve" in result.output


def test_route_is_a_sollol_command() -> None:
    assert "route" in build_cli().commands


def gateway(status: int, body: object) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/sollol/route"
        assert dict(request.url.params) == {"model": "llama3", "ctx": "8192"}
        return httpx.Response(status, json=body)

    return httpx.MockTransport(answer)


def test_asking_a_gateway() -> None:
    decision = {"route": "pool", "policy": "pinned", "reason": "llama3 is pinned", "backend": "a",
                "numbers": {"pin": "llama3"}}
    answer = ask_gateway("http://127.0.0.1:1/", "llama3", 8192, gateway(200, decision))
    assert answer == decision
    assert render("llama3", answer).splitlines() == [
        "llama3 -> pool (backend a), by policy pinned", "  llama3 is pinned", "  numbers:",
        '    pin: "llama3"']

    refused = ask_gateway("http://127.0.0.1:1", "llama3", 8192,
                          gateway(503, {"error": "nothing can hold it"}))
    assert refused == {"error": "nothing can hold it", "status": 503}

    with pytest.raises(SollolError, match="answered 502"):
        ask_gateway("http://127.0.0.1:1", "llama3", 8192, gateway(502, ["not", "a", "table"]))


def test_an_unreachable_gateway_is_a_clear_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(SollolError, match=r"cannot reach the gateway at http://127.0.0.1:9"):
        ask_gateway("http://127.0.0.1:9", "llama3", None, httpx.MockTransport(refuse))


def test_route_answers_what_a_request_does_through_a_fallback(pool_gateway, emulator) -> None:
    """A model served through `model_fallbacks` is routed, not `no route (404)` (issue 28),
    and the gateway's answer is what a real request does."""
    node = emulator(models=["m"])
    gw = pool_gateway(node.address, model_fallbacks={"gone": ["m"]})
    answer = httpx.get(gw.url + "/sollol/route", params={"model": "gone"}).json()
    assert answer["route"] == "pool" and answer["fallback"] == "m"
    assert answer["tried"][0]["model"] == "gone" and answer["tried"][0]["status"] == 404
    reply = httpx.post(gw.url + "/api/chat", json={
        "model": "gone", "messages": [{"role": "user", "content": "hi"}], "stream": False})
    assert reply.status_code == 200 and reply.headers["x-sollol-route"] == "pool"
    shown = CliRunner().invoke(build_cli(), ["route", "gone", "--gateway", gw.url])
    assert shown.exit_code == 0, shown.output
    assert shown.output.startswith("gone (fallback m) -> pool")
    assert "tried first (as a request would):" in shown.output
    unknown = CliRunner().invoke(build_cli(), ["route", "nothing", "--gateway", gw.url])
    assert unknown.exit_code == 1 and "no route (404)" in unknown.output
