"""Commands that read or change cluster state ask the running gateway by default: `sollol route`
(which explains which routes could serve a model) and `sollol pull` (so that the pool knows
the new model at once). Emulated Ollama nodes and a real llama-server without --embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import tomli_w
from click.testing import CliRunner

from sollol.cli import build_cli

FAST = {"health_interval": 0.3, "pool_health_timeout": 2.0}


def point_config_at(path: Path, gw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps({"gateway_port": gw.port}))


def sollol(*args: str):
    return CliRunner().invoke(build_cli(), list(args))


def test_route_asks_the_running_gateway(emulator, pool_gateway, llama_server, tiny_model,
                                        isolated_config: Path) -> None:
    url, _ = llama_server(tiny_model, "--alias", "tiny")
    node = emulator(models=["chat:1b"])
    gw = pool_gateway(node.address, f"openai://{url[7:]}", **FAST)
    point_config_at(isolated_config, gw)
    result = sollol("route", "chat:1b", "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["route"] == "pool" and answer["source"] == f"gateway {gw.url}"
    assert answer["placement"]["pool"]["verdict"] == "can serve"
    text = sollol("route", "tiny", "--endpoint", "embed")
    assert text.exit_code == 1
    assert "tiny: no route (501)" in text.output and "llama-server" in text.output
    assert "--embeddings" in text.output and f"(gateway {gw.url})" in text.output
    ghost = sollol("route", "chat:1", "--json")
    assert ghost.exit_code == 1
    assert json.loads(ghost.output)["status"] == 404
    assert "did you mean 'chat:1b'" in json.loads(ghost.output)["error"]


def test_route_without_a_gateway_decides_here(emulator, isolated_config: Path) -> None:
    node = emulator(models=["chat:1b"])
    isolated_config.parent.mkdir(parents=True, exist_ok=True)
    from sollol.processes import free_port

    isolated_config.write_text(tomli_w.dumps({"ollama_nodes": [node.address],
                                              "gateway_port": free_port()}))
    result = sollol("route", "chat:1b")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].startswith("chat:1b -> pool")
    assert "decided here (no gateway answers at" in result.output


def test_pull_goes_through_the_gateway(emulator, pool_gateway, isolated_config: Path) -> None:
    a, b = emulator(models=["chat:1b"]), emulator(models=["chat:1b"])
    gw = pool_gateway(a.address, b.address, health_interval=60.0)  # no probe would notice
    point_config_at(isolated_config, gw)
    result = sollol("pull", "fresh:1b")
    assert result.exit_code == 0, result.output
    assert "pulled fresh:1b on 2 node(s)" in result.output
    assert a.stats()["requests"]["/api/pull"] == b.stats()["requests"]["/api/pull"] == 1
    reply = httpx.post(gw.url + "/api/chat", json={
        "model": "fresh:1b", "stream": False, "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 200, reply.text  # known at once, not after the next probe
    names = [m["name"] for m in httpx.get(gw.url + "/api/tags").json()["models"]]
    assert "fresh:1b" in names
