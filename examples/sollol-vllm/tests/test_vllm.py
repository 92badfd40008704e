"""The vllm plugin: probes against a server speaking vLLM's documented endpoints, discovery, and a
request routed through a gateway to an OpenAI-compatible server (llama-server stands in for vLLM,
which cannot run on the machines SOLLOL is tested on)."""

from __future__ import annotations

import json

import httpx
import pytest
import sollol_vllm

from sollol.config import Config
from sollol.models import Backend

METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="qwen"} 3.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="qwen"} 7.0
"""


def fake_vllm(*, health: int = 200, models_body: str | None = None,
              metrics: str | None = METRICS) -> httpx.MockTransport:
    """vLLM's replies as its OpenAI-compatible server documents them."""
    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/health":
            return httpx.Response(health)
        if path == "/v1/models":
            body = models_body or json.dumps({"object": "list", "data": [
                {"id": "Qwen/Qwen2.5-7B-Instruct", "object": "model", "owned_by": "vllm",
                 "root": "Qwen/Qwen2.5-7B-Instruct", "parent": None, "max_model_len": 32768}]})
            return httpx.Response(200, text=body)
        if path == "/version":
            return httpx.Response(200, json={"version": "0.11.0"})
        if path == "/metrics" and metrics is not None:
            return httpx.Response(200, text=metrics)
        return httpx.Response(404, json={"detail": "Not Found"})

    return httpx.MockTransport(handle)


def backend(max_waiting: int = 0) -> Backend:
    return Backend("10.9.9.9:8000", "vllm", "10.9.9.9:8000",
                   labels={"scheme": "http", "max_waiting": str(max_waiting)})


def test_a_ready_server_reports_its_model_context_version_and_load() -> None:
    report = sollol_vllm.probe(backend(), 2.0, transport=fake_vllm())
    assert report.healthy, report.detail
    assert report.models == ("Qwen/Qwen2.5-7B-Instruct",)
    assert report.version == "0.11.0"
    assert report.extra["meta"]["Qwen/Qwen2.5-7B-Instruct"]["n_ctx_train"] == 32768
    assert (report.extra["requests_running"], report.extra["requests_waiting"]) == (3, 7)
    assert report.detail == "ok: 3 running, 7 waiting"


def test_a_loading_engine_is_not_ready() -> None:
    report = sollol_vllm.probe(backend(), 2.0, transport=fake_vllm(health=503))
    assert not report.healthy and "engine not ready" in report.detail


def test_a_long_queue_sends_work_elsewhere() -> None:
    report = sollol_vllm.probe(backend(max_waiting=5), 2.0, transport=fake_vllm())
    assert not report.healthy
    assert report.detail == "7 requests waiting, over vllm_max_waiting (5)"
    assert sollol_vllm.probe(backend(max_waiting=10), 2.0, transport=fake_vllm()).healthy


def test_no_metrics_endpoint_is_fine() -> None:
    report = sollol_vllm.probe(backend(max_waiting=1), 2.0, transport=fake_vllm(metrics=None))
    assert report.healthy and report.detail == "ok"


@pytest.mark.parametrize("body", ["not json", "{}", '{"data": [{"name": "x"}]}', '{"data": 5}'])
def test_a_reply_that_is_not_vllms_json_is_unhealthy_not_a_crash(body: str) -> None:
    report = sollol_vllm.probe(backend(), 2.0, transport=fake_vllm(models_body=body))
    assert not report.healthy and report.detail.startswith("bad reply")


def test_an_unreachable_server_is_unhealthy() -> None:
    report = sollol_vllm.sollol_check_health(
        Backend("127.0.0.1:9", "vllm", "127.0.0.1:9", labels={"scheme": "http"}), 1.0)
    assert not report.healthy


def test_other_kinds_are_left_to_other_plugins() -> None:
    assert sollol_vllm.sollol_check_health(Backend("a:1", "ollama", "a:1"), 1.0) is None


def test_discovery_reads_addresses_with_vllms_default_port() -> None:
    config = Config(values={"vllm_nodes": ["gpu1", "https://gpu2:9000", "[fd00::1]"],
                            "vllm_max_waiting": 4})
    found = list(sollol_vllm.sollol_discover_backends(config))
    assert [(b.id, b.labels["scheme"]) for b in found] == [
        ("gpu1:8000", "http"), ("gpu2:9000", "https"), ("[fd00::1]:8000", "http")]
    assert {b.kind for b in found} == {"vllm"}


def test_the_gateway_routes_requests_to_the_plugins_nodes(
    sollol_gateway, llama_server, tiny_model,
) -> None:
    url, _proc = llama_server(tiny_model)
    address = url.removeprefix("http://")
    gateway = sollol_gateway(plugins=["ollama_pool", "vllm"], vllm_nodes=[address],
                             ollama_nodes=["127.0.0.1:9"])  # a dead Ollama node beside it
    nodes = httpx.get(gateway.url + "/sollol/nodes", timeout=30).json()["nodes"]
    mine = [n for n in nodes if n["id"] == address]
    assert mine and (mine[0]["kind"], mine[0]["api"]) == ("vllm", "openai"), nodes
    model = httpx.get(gateway.url + "/v1/models", timeout=30).json()["data"][0]["id"]
    for path, body in [("/v1/chat/completions", {"messages": [{"role": "user",
                                                                "content": "hi"}]}),
                       ("/api/generate", {"prompt": "hi", "stream": False})]:
        reply = httpx.post(gateway.url + path, timeout=60,
                           json={"model": model, "max_tokens": 4, **body})
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-sollol-backend"] == address
