"""The emulator's speed settings and fault injection, in-process and as a separate process."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import ollama
import pytest

from sollol.testing.emulator import EmulatedModel, EmulatorNode, Faults

MSG = [{"role": "user", "content": "hello"}]


def test_tokens_per_second_paces_generation(emulator):
    node = emulator(models=["m"], tokens_per_second=100, latency=0.05, response_tokens=10)
    reply = ollama.Client(node.url, timeout=30).generate(model="m", prompt="x")
    assert reply.eval_count == 10
    assert reply.eval_duration >= 0.09e9  # 10 tokens at 100/s, never faster
    assert reply.prompt_eval_duration >= 0.05e9


def test_parallel_limits_concurrency(emulator):
    node = emulator(models=["m"], tokens_per_second=200, response_tokens=10, parallel=2)
    client = ollama.Client(node.url, timeout=30)
    threads = [threading.Thread(target=client.generate, kwargs={"model": "m", "prompt": "x"})
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert node.stats()["requests"]["/api/generate"] == 6
    assert node.stats()["tokens"] == 60


def test_error_status_and_error_count(emulator):
    node = emulator(models=["m"], faults=Faults(error_status=500, error_count=1))
    client = ollama.Client(node.url, timeout=30)
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model="m", prompt="x")
    assert err.value.status_code == 500
    assert client.generate(model="m", prompt="x").done  # only the first one failed
    assert client.list().models  # scope "inference": probes are not hit
    node.set_faults(error_status=503, scope="all")
    with pytest.raises(ollama.ResponseError):
        client.list()
    assert node.stats()["injected"] == {"status_500": 1, "status_503": 1}


def test_hang_never_answers_and_the_client_times_out(emulator):
    node = emulator(models=["m"], faults=Faults(hang=True))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(node.url + "/api/generate", json={"model": "m", "prompt": "x"}, timeout=0.5)
    node.clear_faults()
    assert httpx.post(node.url + "/api/generate", timeout=10,
                      json={"model": "m", "prompt": "x", "stream": False}).json()["done"]


def test_drop_after_chunks_cuts_the_stream(emulator):
    node = emulator(models=["m"], faults=Faults(drop_after=3))
    received = []
    with pytest.raises(httpx.RemoteProtocolError), httpx.stream(
            "POST", node.url + "/api/chat", json={"model": "m", "messages": MSG},
            timeout=10) as response:
        for line in response.iter_lines():
            received.append(json.loads(line))
    assert len(received) == 3 and not any(r["done"] for r in received)
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(node.url + "/api/chat", timeout=10,
                   json={"model": "m", "messages": MSG, "stream": False})


def test_refuse_closes_the_listener_and_reopens_on_the_same_port(emulator):
    node = emulator(models=["m"])
    port = node.port
    node.set_faults(refuse=True)
    with pytest.raises(httpx.ConnectError):
        httpx.get(node.url + "/api/version", timeout=5)
    with pytest.raises(ConnectionError):
        ollama.Client(node.url, timeout=5).list()
    node.clear_faults()
    assert node.port == port
    assert httpx.get(node.url + "/api/version", timeout=5).status_code == 200


def test_refuse_cuts_requests_in_flight(emulator):
    node = emulator(models=["m"], tokens_per_second=20, response_tokens=100)
    with pytest.raises(httpx.RemoteProtocolError), httpx.stream(
            "POST", node.url + "/api/generate", json={"model": "m", "prompt": "x"},
            timeout=10) as response:
        for i, _line in enumerate(response.iter_lines()):
            if i == 1:
                node.refuse()


def test_faults_over_http_with_refuse_seconds(emulator):
    node = emulator(models=["m"])
    reply = httpx.post(node.url + "/_emulator/faults", json={"refuse_seconds": 0.5})
    assert reply.status_code == 200
    deadline = time.monotonic() + 5
    refused = False
    while time.monotonic() < deadline and not refused:
        try:
            httpx.get(node.url + "/api/version", timeout=1)
        except httpx.ConnectError:
            refused = True
        except httpx.TransportError:
            pass  # the listener closed while this request was being accepted
        time.sleep(0.02)
    assert refused
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            assert httpx.get(node.url + "/api/version", timeout=1).status_code == 200
            break
        except httpx.TransportError:
            time.sleep(0.05)
    else:
        pytest.fail("the node did not reopen after refuse_seconds")


def test_fault_api_validates_and_reports(emulator):
    node = emulator(models=["m"])
    url = node.url + "/_emulator/faults"
    assert httpx.post(url, json={"bogus": 1}).status_code == 400
    assert httpx.post(url, json={"error_status": 200}).status_code == 400
    assert httpx.post(url, json={"hang": "yes"}).status_code == 400
    assert httpx.post(url, json={"slowdown": 3, "extra_latency": 0.01}).status_code == 200
    assert httpx.get(url).json()["slowdown"] == 3
    assert httpx.post(url, json={"reset": True}).json()["slowdown"] == 1
    stats = httpx.get(node.url + "/_emulator/stats").json()
    assert stats["node"] == node.name and stats["requests"]["/_emulator/faults"] == 6


def test_slowdown_stretches_timings(emulator):
    node = emulator(models=[EmulatedModel("m")], tokens_per_second=200, response_tokens=10)
    client = ollama.Client(node.url, timeout=30)
    node.set_faults(slowdown=4)
    slow = client.generate(model="m", prompt="x")
    assert slow.eval_duration >= 0.19e9  # 10 tokens at 50/s


def test_stop_is_idempotent_and_frees_the_port():
    node = EmulatorNode(models=["m"]).start()
    port = node.port
    node.stop()
    node.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/", timeout=2)


def test_emulator_as_a_process(emulator_process, processes):
    url = emulator_process("llama3.2:1b", flags=["--cold-model", "big:70b",
                                                 "--tokens-per-second", "500"])
    client = ollama.Client(url, timeout=30)
    assert {m.model for m in client.list().models} == {"llama3.2:1b", "big:70b"}
    assert client.generate(model="llama3.2:1b", prompt="x").done
    proc = processes.processes[-1]
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.popen.wait(10) == 0
