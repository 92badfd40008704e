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
    from sollol.core.processes import free_port

    isolated_config.write_text(tomli_w.dumps({"ollama_nodes": [node.address],
                                              "gateway_port": free_port(),
                                              "model_aliases": {"fast": "chat:1b"}}))
    result = sollol("route", "chat:1b")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].startswith("chat:1b -> pool")
    assert "decided here (no gateway answers at" in result.output
    alias = sollol("route", "fast", "--direct", "--json")
    assert alias.exit_code == 0, alias.output
    assert json.loads(alias.output)["alias_of"] == "chat:1b"


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


def test_batch_through_a_gateway(emulator, pool_gateway, tmp_path: Path) -> None:
    node = emulator(models=["chat:1b"])
    gw = pool_gateway(node.address, **FAST)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(line) + "\n" for line in (
        {"id": "a", "model": "chat:1b", "prompt": "hi"},
        {"id": "b", "model": "chat:1b", "messages": [{"role": "user", "content": "x"}]},
        {"id": "c", "model": "chat:1b", "input": ["text"]})))
    result = sollol("batch", str(src), "-o", str(out), "--gateway", gw.url, "--no-progress")
    assert result.exit_code == 0, result.output
    records = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(records) == {"a", "b", "c"}
    assert all(r["ok"] and r["route"] == "pool" and r["backend"] == node.address
               for r in records.values())
    assert sum(node.stats()["requests"].values()) >= 3  # they went through that gateway
    mixed = sollol("batch", str(src), "--gateway", gw.url, "--node", node.address)
    assert mixed.exit_code == 2 and "--gateway" in mixed.output


def test_shard_logs_found_through_the_gateway(rpc_servers, sharding_config, tiny_model: Path,
                                              isolated_config: Path, tmp_path: Path) -> None:
    """A gateway whose coordinators log outside the config's state dir (as `sollol run
    --local` does): `sollol shard logs` asks it where."""
    from sollol.core.plugin_manager import get_plugin_manager
    from sollol.core.runtime import ClusterRuntime
    from sollol.gateway import GatewayThread

    (address, _), = rpc_servers(1)
    config = sharding_config([address], rpc_state_dir=str(tmp_path / "elsewhere"))
    pm = get_plugin_manager(["llamacpp_rpc"])
    gw = GatewayThread(ClusterRuntime(config=config, pm=pm)).start()
    try:
        reply = httpx.post(gw.url + "/api/generate", timeout=300, json={
            "model": str(tiny_model), "prompt": "hi", "stream": False,
            "options": {"num_predict": 2}})
        assert reply.status_code == 200, reply.text
        point_config_at(isolated_config, gw)
        logs = sollol("shard", "logs", str(tiny_model), "-n", "400")
        assert logs.exit_code == 0, logs.output
        assert "model buffer size" in logs.output
        alone = sollol("shard", "logs", str(tiny_model), "--local")
        assert alone.exit_code == 1 and "no coordinator log" in alone.output
    finally:
        gw.stop()
