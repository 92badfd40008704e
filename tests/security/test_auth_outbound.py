"""Pool nodes with their own keys and base paths (a vLLM or LiteLLM behind the pool): honoured by
inference, health probes and model listing; never shown in `/sollol/*`, `sollol nodes`,
`sollol config show`, errors or logs."""

from __future__ import annotations

import json
import logging

import httpx
import openai
import pytest
from click.testing import CliRunner
from sollol_plugins.ollama_pool.node_discovery import base_url, parse_entry, parse_node

from sollol.cli import build_cli
from sollol.core.runtime import load
from sollol.errors import ConfigError

NODE_KEY = "sk-node-7f3a9c1e5b2d4086a1c3e5f7"
CHAT = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}]}


def test_node_address_forms():
    node = parse_node(f"openai://{NODE_KEY}@127.0.0.1:8000/litellm/v1/")
    assert (node.id, node.address, base_url(node)) == (
        "127.0.0.1:8000/litellm", "127.0.0.1:8000", "http://127.0.0.1:8000/litellm")
    assert node.auth_headers() == {"Authorization": f"Bearer {NODE_KEY}"}
    assert NODE_KEY not in repr(node) and NODE_KEY not in str(node.credentials)
    assert parse_node("openai://:k%40y@h:1").auth_headers() == {"Authorization": "Bearer k@y"}
    basic = parse_node("ollama://admin:p%3Ass@h:1").auth_headers()["Authorization"]
    assert basic == "Basic YWRtaW46cDpzcw=="  # admin:p:ss
    plain = parse_node("h:2")
    assert plain.credentials is None and plain.auth_headers() == {} and base_url(plain) == \
        "http://h:2"
    assert parse_entry({"url": "openai://h:3/x", "api_key": NODE_KEY}).auth_headers() == \
        {"Authorization": f"Bearer {NODE_KEY}"}
    from_env = parse_entry({"url": "openai://h:3", "api_key_env": "VLLM_KEY"},
                           env={"VLLM_KEY": NODE_KEY})
    assert from_env.auth_headers()["Authorization"].endswith(NODE_KEY)
    with pytest.raises(ValueError, match="VLLM_KEY' is not set"):
        parse_entry({"url": "openai://h:3", "api_key_env": "VLLM_KEY"}, env={})


@pytest.mark.parametrize("bad", [f"openai://{NODE_KEY}@h:notaport", f"openai//{NODE_KEY}@h:1",
                                 f"{NODE_KEY}@h:1/x/../y", f"http:/{NODE_KEY}@h",
                                 f"openai://{NODE_KEY}@h:1/p?x=1", f"bogus://{NODE_KEY}@h:1"])
def test_bad_node_addresses_never_echo_the_key(bad):
    with pytest.raises(ValueError) as err:
        parse_node(bad)
    assert NODE_KEY not in str(err.value)
    try:  # the config check refuses most of them already
        load(overrides={"ollama_nodes": [bad]})
    except ConfigError as exc:
        assert NODE_KEY not in str(exc)


@pytest.mark.parametrize("entry", [{"url": "h:1", "api_key": "a\r\nX-Evil: 1"}, {"api_key": "k"},
                                   {"url": "h:1", "api_key": "k", "api_key_env": "V"},
                                   {"url": "h:1", "token": NODE_KEY}, 42])
def test_bad_node_tables_are_config_errors_without_the_key(entry):
    with pytest.raises(ConfigError) as err:
        load(overrides={"ollama_nodes": [entry]})
    assert NODE_KEY not in str(err.value) and "a\r\nX-Evil" not in str(err.value)


@pytest.fixture
def keyed_node(scripted_node):
    return scripted_node(api="openai", models=("scripted",), prefix="/litellm",
                         authorization=f"Bearer {NODE_KEY}")


@pytest.mark.parametrize("form", ["url", "table", "env"])
def test_inference_probes_and_listing_carry_the_nodes_key_and_path(
        keyed_node, pool_gateway, caplog, monkeypatch, form):
    caplog.set_level(logging.DEBUG)
    where = keyed_node.url.removeprefix("http://")
    entry = {"url": f"openai://{NODE_KEY}@{where}/litellm/v1",
             "table": {"url": f"openai://{where}/litellm", "api_key": NODE_KEY},
             "env": {"url": f"openai://{where}/litellm", "api_key_env": "NODE_KEY"}}[form]
    monkeypatch.setenv("NODE_KEY", NODE_KEY)
    gw = pool_gateway(entry)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["scripted"]  # listed from the node
    reply = client.chat.completions.create(**CHAT)
    assert reply.choices[0].message.content == "Hello from a scripted node"
    streamed = "".join(c.choices[0].delta.content or "" for c in
                       client.chat.completions.create(**CHAT, stream=True) if c.choices)
    assert streamed == "Hello from a scripted node"
    assert keyed_node.refused == []  # every probe and request had the key and the path
    assert [r["path"] for r in keyed_node.requests] == ["/litellm/v1/chat/completions"] * 2
    nodes = httpx.get(gw.url + "/sollol/nodes").json()
    assert nodes["nodes"][0]["health"] == "healthy"
    assert nodes["nodes"][0]["url"] == f"http://{where}/litellm"
    for path in ("/sollol/nodes", "/sollol/state", "/sollol/events"):
        assert NODE_KEY not in httpx.get(gw.url + path).text
    listed = CliRunner().invoke(build_cli(), ["nodes", "--json", "--gateway", gw.url])
    assert listed.exit_code == 0 and NODE_KEY not in listed.output
    assert NODE_KEY not in caplog.text


def test_a_wrong_node_key_is_a_down_node_and_never_leaks(scripted_node, pool_gateway, caplog):
    caplog.set_level(logging.DEBUG)
    node = scripted_node(api="openai", authorization="Bearer right-key")
    gw = pool_gateway(f"openai://{NODE_KEY}@{node.url.removeprefix('http://')}")
    state = httpx.get(gw.url + "/sollol/nodes").json()["nodes"][0]
    assert state["health"] != "healthy" and "401" in state["detail"]
    reply = httpx.post(gw.url + "/v1/chat/completions", json=CHAT)
    assert reply.status_code >= 400 and NODE_KEY not in reply.text
    assert NODE_KEY not in caplog.text


def test_config_show_redacts_node_keys(monkeypatch):
    monkeypatch.setenv("SOLLOL_OLLAMA_NODES", json.dumps(
        [f"openai://{NODE_KEY}@h:1/p", {"url": "openai://h:2", "api_key": NODE_KEY}]))
    shown = CliRunner().invoke(build_cli(), ["config", "show", "--json"])
    assert shown.exit_code == 0 and NODE_KEY not in shown.output
    nodes = json.loads(shown.output)["values"]["ollama_nodes"]
    assert nodes == ["openai://***@h:1/p", {"url": "openai://h:2", "api_key": "***"}]


@pytest.mark.llamacpp
def test_a_real_llama_server_with_api_key_and_prefix(processes, llama_binaries, tiny_model,
                                                    pool_gateway):
    from sollol.core.processes import free_port, wait_http

    port = free_port()
    proc = processes.start("llama-server-keyed", [
        llama_binaries.llama_server, "-m", tiny_model, "--host", "127.0.0.1", "--port",
        str(port), "-t", "1", "-c", "512", "--alias", "tiny", "--api-key", NODE_KEY,
        "--api-prefix", "/llm"])
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/llm/health", process=proc, timeout=120,
              headers={"Authorization": f"Bearer {NODE_KEY}"})
    assert httpx.get(url + "/llm/health").status_code == 401  # health needs the key too
    assert httpx.post(url + "/llm/v1/chat/completions", json={**CHAT, "model": "tiny"}
                      ).status_code == 401  # the node really wants its key
    gw = pool_gateway({"url": f"openai://127.0.0.1:{port}/llm", "api_key": NODE_KEY})
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(model="tiny", max_tokens=4,
                                           messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content is not None
    assert httpx.get(gw.url + "/sollol/nodes").json()["nodes"][0]["health"] == "healthy"


def test_a_reload_rotates_a_nodes_key(scripted_node, isolated_config):
    from sollol.config import write_file
    from sollol.core.runtime import ClusterRuntime
    from sollol.gateway import GatewayThread

    node = scripted_node(api="openai", authorization="Bearer first-key-0123456789")
    where = node.url.removeprefix("http://")
    write_file(isolated_config, {"ollama_nodes": [
        {"url": f"openai://{where}", "api_key": "first-key-0123456789"}]})
    with GatewayThread(ClusterRuntime.from_config()) as gw:
        assert httpx.post(gw.url + "/v1/chat/completions", json=CHAT).status_code == 200
        node.authorization = "Bearer second-key-0123456789"  # the node's key is rotated
        assert httpx.post(gw.url + "/v1/chat/completions", json=CHAT).status_code >= 400
        write_file(isolated_config, {"ollama_nodes": [
            {"url": f"openai://{where}", "api_key": "second-key-0123456789"}]})
        report = httpx.post(gw.url + "/sollol/reload", json={}).json()
        assert report["ok"] and "ollama_nodes" in report["changed"]
        assert httpx.post(gw.url + "/v1/chat/completions", json=CHAT).status_code == 200


def test_an_ollama_node_behind_basic_auth_gets_it_on_every_call(emulator, pool_gateway,
                                                                caplog):
    """Inference, probes, listing, /api/show and model management (pull, copy, delete,
    create) all carry the node's credentials."""
    import ollama

    caplog.set_level(logging.DEBUG)
    node = emulator(models=["m"], library=["fresh"],
                    authorization="Basic b3BzOnMzY3IzdC1wYXNzd29yZA==")  # ops:s3cr3t-password
    gw = pool_gateway(f"ollama://ops:s3cr3t-password@{node.address}")
    client = ollama.Client(host=gw.url, timeout=30)
    assert [m.model for m in client.list().models] == ["m:latest"]
    assert client.generate(model="m", prompt="hi").response
    assert client.show("m").details is not None
    assert client.pull("fresh").status == "success"
    assert client.copy("fresh", "fresh-2").status == "success"
    assert client.delete("fresh-2").status == "success"
    assert client.create(model="made", from_="m").status == "success"
    assert node.refused == []  # not one call without the credentials
    assert {"/api/pull", "/api/copy", "/api/delete", "/api/create", "/api/show"} <= \
        set(node.stats()["requests"])
    assert "s3cr3t-password" not in httpx.get(gw.url + "/sollol/nodes").text
    assert "s3cr3t-password" not in caplog.text
