"""The pool over two real `llama-server` nodes (OpenAI-compatible) on loopback, with a tiny GGUF,
through the gateway, with the official `ollama` and `openai` clients."""

from __future__ import annotations

import httpx
import ollama
import openai
import pytest
from sollol_plugins.ollama_pool.node_probe import check

from sollol.models import Backend

pytestmark = [pytest.mark.llamacpp, pytest.mark.slow]
MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture
def two_servers(llama_server, tiny_model):
    first, _ = llama_server(tiny_model, "--alias", "tiny", "--parallel", "2")
    second, second_proc = llama_server(tiny_model, "--alias", "tiny")
    return first, second, second_proc


def test_probe_reads_health_models_and_slots(two_servers):
    first, _second, _ = two_servers
    address = first.removeprefix("http://")
    report = check(Backend(address, "openai", address, labels={"scheme": "http"}), 5.0)
    assert report.healthy and report.models == ("tiny",)
    assert report.extra["api"] == "openai" and report.extra["slots"] == 2
    detected = check(Backend(address, "ollama", address,
                             labels={"scheme": "http", "detect": "1"}), 5.0)
    assert detected.healthy and detected.extra["api"] == "openai"  # auto-detected


def test_clients_through_two_llama_servers(two_servers, pool_gateway):
    first, second, second_proc = two_servers
    # one node named explicitly, one by a bare address (the probe detects its dialect)
    gw = pool_gateway("openai://" + first.removeprefix("http://"),
                      second.removeprefix("http://"), health_interval=0.5)
    nodes = httpx.get(gw.url + "/sollol/nodes").json()["nodes"]
    assert [n["api"] for n in nodes] == ["openai", "openai"]
    assert nodes[0]["limit"] == 2  # from llama-server's /slots (--parallel 2)
    oclient = ollama.Client(gw.url, timeout=120)
    assert [m.model for m in oclient.list().models] == ["tiny"]
    backends = set()
    for i in range(4):  # distinct conversations (one conversation would stick to one node)
        messages = [{"role": "user", "content": f"question {i}"}]
        reply = httpx.post(gw.url + "/api/chat", timeout=120, json={
            "model": "tiny", "messages": messages, "stream": False,
            "options": {"num_predict": 4}})
        assert reply.status_code == 200 and reply.json()["done"]
        backends.add(reply.headers["x-sollol-backend"])
    assert len(backends) == 2  # both servers took work
    parts = list(oclient.chat(model="tiny", messages=MSG, stream=True,
                              options={"num_predict": 4}))
    assert parts[-1].done
    oai = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0, timeout=120)
    answer = oai.chat.completions.create(model="tiny", messages=MSG, max_tokens=4)
    assert answer.choices[0].finish_reason in ("length", "stop")
    with pytest.raises(ollama.ResponseError) as err:
        oclient.chat(model="not-there", messages=MSG)
    assert err.value.status_code == 404
    # a crashed server: the pool keeps serving from the other one
    second_proc.kill()
    for _ in range(3):
        assert oclient.generate(model="tiny", prompt="hi", options={"num_predict": 2}).done
