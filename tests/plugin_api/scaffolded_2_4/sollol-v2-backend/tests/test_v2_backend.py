"""Tests for the v2-backend backend plugin, on a real OpenAI-compatible server (llama-server)."""

from __future__ import annotations

import httpx

from sollol.models import Backend


def test_health_check_lists_the_served_model(llama_server, tiny_model) -> None:
    import sollol_v2_backend

    url, _proc = llama_server(tiny_model)
    address = url.removeprefix("http://")
    report = sollol_v2_backend.sollol_check_health(
        Backend(address, sollol_v2_backend.KIND, address), timeout=5.0)
    assert report.healthy, report.detail
    assert report.models, "the server's model list is empty"


def test_a_dead_server_is_unhealthy() -> None:
    import sollol_v2_backend

    report = sollol_v2_backend.sollol_check_health(
        Backend("127.0.0.1:9", sollol_v2_backend.KIND, "127.0.0.1:9"), timeout=1.0)
    assert not report.healthy


def test_the_gateway_routes_a_request_through_the_plugin(
    sollol_gateway, llama_server, tiny_model,
) -> None:
    url, _proc = llama_server(tiny_model)
    gateway = sollol_gateway(plugins=["ollama_pool", "v2-backend"],
                             v2_backend_nodes=[url.removeprefix("http://")],
                             ollama_nodes=["127.0.0.1:9"])  # a dead Ollama node beside it
    models = httpx.get(gateway.url + "/v1/models", timeout=30).json()["data"]
    model = models[0]["id"]
    reply = httpx.post(gateway.url + "/v1/chat/completions", timeout=60, json={
        "model": model, "max_tokens": 4,
        "messages": [{"role": "user", "content": "hello"}]})
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-sollol-backend"] == url.removeprefix("http://")
    assert reply.json()["choices"][0]["message"]["content"] is not None
