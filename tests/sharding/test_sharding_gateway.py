"""Sharding through the real gateway, with the official `ollama` and `openai` clients."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import ollama
import openai
import pytest
from click.testing import CliRunner

from sollol.cli import build_cli

pytestmark = [pytest.mark.llamacpp, pytest.mark.slow]
MESSAGES = [{"role": "user", "content": "tell me about the shard layer"}]


def direct_reply(llama_server, model: Path) -> str:
    url, _proc = llama_server(model)
    response = httpx.post(url + "/v1/chat/completions", timeout=120, json={
        "messages": MESSAGES, "max_tokens": 24, "temperature": 0})
    return response.json()["choices"][0]["message"]["content"]


def test_ollama_client_through_the_gateway_matches_a_local_run(
    rpc_servers, sharding_gateway, tiny_model: Path, llama_server, isolated_config: Path,
) -> None:
    servers = rpc_servers(3)
    gateway = sharding_gateway([a for a, _ in servers], rpc_placement="all")
    client = ollama.Client(host=gateway.url, timeout=120)
    model = str(tiny_model)
    reply = client.chat(model=model, messages=MESSAGES,
                        options={"temperature": 0, "num_predict": 24})
    assert reply.message.content == direct_reply(llama_server, tiny_model)

    streamed = "".join(part.message.content for part in client.chat(
        model=model, messages=MESSAGES, stream=True,
        options={"temperature": 0, "num_predict": 24}))
    assert streamed == reply.message.content

    snap = httpx.get(gateway.url + "/sollol/routes/sharding", timeout=10).json()
    (coord,) = snap["coordinators"]
    assert coord["served"] == 2  # the second request reused the warm coordinator
    assert [b["address"] for b in coord["layers"]["backends"]] == [a for a, _ in servers]
    assert all(b["layers"] > 0 for b in coord["layers"]["backends"])

    isolated_config.parent.mkdir(parents=True, exist_ok=True)
    isolated_config.write_text('plugins = ["llamacpp_rpc"]\n')
    result = CliRunner().invoke(build_cli(), ["shard", "status", "--url", gateway.url])
    assert result.exit_code == 0, result.output
    assert f"source: gateway {gateway.url}" in result.output
    for address, _proc in servers:
        assert address in result.output


def test_openai_client_through_the_gateway(rpc_servers, sharding_gateway,
                                           tiny_model: Path) -> None:
    gateway = sharding_gateway([a for a, _ in rpc_servers(2)])
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", timeout=120)
    reply = client.chat.completions.create(model=str(tiny_model), messages=MESSAGES,
                                           max_tokens=8, temperature=0)
    assert reply.choices[0].message.content


def test_killed_shard_mid_request_is_a_clear_error_then_survivors_serve(
    rpc_servers, sharding_gateway, tiny_model: Path,
) -> None:
    servers = rpc_servers(3)
    gateway = sharding_gateway([a for a, _ in servers], rpc_placement="all")
    client = ollama.Client(host=gateway.url, timeout=120)
    model = str(tiny_model)
    client.chat(model=model, messages=MESSAGES, options={"num_predict": 2})  # warm it up

    started = time.monotonic()
    with pytest.raises((ollama.ResponseError, httpx.HTTPError)) as info:
        for count, _part in enumerate(client.chat(
                model=model, messages=MESSAGES, stream=True,
                options={"temperature": 0, "num_predict": 100000})):
            if count == 2:
                servers[0][1].kill()
    assert time.monotonic() - started < 60  # an error, not a hang
    print("client saw:", info.value)
    assert "rpc-server" in str(info.value)  # says why, not just "connection closed"

    reply = client.chat(model=model, messages=MESSAGES,
                        options={"temperature": 0, "num_predict": 8})
    assert reply.message.content
    snap = httpx.get(gateway.url + "/sollol/routes/sharding", timeout=10).json()
    (coord,) = snap["coordinators"]
    assert coord["backends"] == [a for a, _ in servers[1:]]
    assert coord["generation"] == 2


def test_shard_status_asks_the_gateway_directly_despite_a_proxy(
    sharding_gateway, isolated_config: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sollol.core.processes import free_port

    gateway = sharding_gateway([f"127.0.0.1:{free_port()}"])
    isolated_config.parent.mkdir(parents=True, exist_ok=True)
    isolated_config.write_text('plugins = ["llamacpp_rpc"]\n')
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{free_port()}")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(build_cli(), ["shard", "status", "--url", gateway.url])
    assert result.exit_code == 0, result.output
    assert f"source: gateway {gateway.url}" in result.output
