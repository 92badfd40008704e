"""Streaming and failover: chunks are forwarded at once, retries happen only before the first
byte, a stream cut after it ends with an error object, and a client that leaves cancels the
upstream request."""

from __future__ import annotations

import json
import time

import httpx
import ollama
import openai
import pytest

from sollol.testing.static_route import StaticRoute, Upstream

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def _wait(predicate, timeout=20.0):
    """Poll until `predicate()` is true (a guard against hangs, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.02)


@pytest.mark.parametrize(("backend_api", "path"), [
    ("ollama", "/api/chat"), ("openai", "/api/chat"),
    ("openai", "/v1/chat/completions"), ("ollama", "/v1/chat/completions"),
])
def test_first_chunk_arrives_before_the_pause_ends(scripted_node, gateway, backend_api, path):
    node = scripted_node(api=backend_api, pause_after_first=2.0)
    gw = gateway([StaticRoute("pool", [Upstream("slow", node.url, backend_api, ("m",))])])
    with httpx.stream("POST", gw.url + path, json={**CHAT, "stream": True}, timeout=30) as reply:
        assert reply.status_code == 200
        chunks = reply.iter_raw()
        first = next(chunks)
        first_at = time.monotonic()
        rest = b"".join(chunks)
        ended_at = time.monotonic()
    assert b"Hello" in first
    assert b"scripted" not in first  # the words after the pause came later
    assert ended_at - first_at > 1.0  # the first chunk came well before the 2 s pause ended
    assert b"scripted" in rest


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_client_disconnect_cancels_the_upstream_request(scripted_node, gateway, path):
    node = scripted_node(api="ollama", pause_after_first=1.0)
    route = StaticRoute("pool", [Upstream("node", node.url, "ollama", ("m",))])
    gw = gateway([route])
    with httpx.stream("POST", gw.url + path, json={**CHAT, "stream": True}, timeout=30) as reply:
        next(reply.iter_raw())
    _wait(lambda: route.outcomes)
    backend, outcome = route.outcomes[0]
    assert backend == "node" and not outcome.ok and outcome.error == "client disconnected"
    assert outcome.first_byte_sent and route.in_flight["node"] == 0
    _wait(lambda: node.disconnects == 1)  # the upstream connection was closed, not drained


@pytest.mark.parametrize("fault", [{"error_status": 500}, {"refuse": True}])
def test_failure_before_the_first_byte_retries_on_another_node(emulator, gateway, fault):
    bad, good = emulator(models=["m"]), emulator(models=["m"])
    bad.set_faults(**fault)
    route = StaticRoute("pool", [Upstream("bad", bad.url, "ollama", ("m",)),
                                 Upstream("good", good.url, "ollama", ("m",))])
    gw = gateway([route])
    reply = httpx.post(gw.url + "/api/chat", json={**CHAT, "stream": False}, timeout=30)
    assert reply.status_code == 200 and reply.json()["done"]
    assert reply.headers["x-sollol-backend"] == "good"
    assert [b for b, _ in route.outcomes] == ["bad", "good"]
    failed = route.outcomes[0][1]
    assert not failed.ok and (failed.status == 500 or failed.connect_failed)
    event = httpx.get(gw.url + "/sollol/events").json()["events"][-1]
    assert event["attempts"] == 2 and event["ok"] and event["backend"] == "good"


def test_at_most_two_retries_then_503_naming_the_failures(emulator, gateway):
    nodes = [emulator(models=["m"]) for _ in range(4)]
    for node in nodes[:3]:
        node.set_faults(refuse=True)
    route = StaticRoute("pool", [Upstream(f"n{i}", n.url, "ollama", ("m",))
                                 for i, n in enumerate(nodes)])
    gw = gateway([route])
    reply = httpx.post(gw.url + "/api/chat", json=CHAT, timeout=30)
    assert reply.status_code == 503 and int(reply.headers["retry-after"]) >= 1
    message = reply.json()["error"]
    assert "n0" in message and "n1" in message and "n2" in message
    assert nodes[3].stats()["total"] == 0  # bounded extra load: the fourth node was never tried
    assert len(route.outcomes) == 3


def test_hanging_backend_is_cut_at_the_request_timeout(emulator, gateway):
    node = emulator(models=["m"])
    node.set_faults(hang=True)
    gw = gateway([StaticRoute("pool", [Upstream("hang", node.url, "ollama", ("m",))])],
                 request_timeout=1.0)
    reply = httpx.post(gw.url + "/api/generate", json={"model": "m", "prompt": "x"}, timeout=30)
    assert reply.status_code == 503 and "timed out" in reply.json()["error"]


def test_drop_after_first_byte_ends_with_an_error_object_and_no_retry(emulator, gateway):
    dropping, spare = emulator(models=["m"]), emulator(models=["m"])
    dropping.set_faults(drop_after=3)
    route = StaticRoute("pool", [Upstream("drop", dropping.url, "ollama", ("m",)),
                                 Upstream("spare", spare.url, "ollama", ("m",))])
    gw = gateway([route])
    with httpx.stream("POST", gw.url + "/api/chat", json=CHAT, timeout=30) as reply:
        lines = [json.loads(line) for line in reply.iter_lines() if line.strip()]
    assert lines[0]["message"]["content"] and "error" in lines[-1]
    assert "stream cut" in lines[-1]["error"] and "drop" in lines[-1]["error"]
    assert spare.stats()["total"] == 0
    with pytest.raises(ollama.ResponseError, match="stream cut"):
        for _ in ollama.Client(gw.url).chat(model="m", messages=CHAT["messages"], stream=True):
            pass


def test_drop_mid_stream_reaches_openai_clients_as_an_error(emulator, gateway):
    node = emulator(models=["m"])
    node.set_faults(drop_after=2)
    gw = gateway([StaticRoute("pool", [Upstream("drop", node.url, "ollama", ("m",))])])
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIError, match="stream cut"):
        for _ in client.chat.completions.create(model="m", messages=CHAT["messages"],
                                                stream=True):
            pass


class ExplainingRoute(StaticRoute):
    """Leases that can say why their upstream failed (as the sharding route's do)."""

    async def acquire(self, request, *, backend=None, exclude=()):
        lease = await super().acquire(request, backend=backend, exclude=exclude)
        lease.explain = lambda: f"shard of {lease.backend.id} died"
        return lease


def test_failures_carry_the_routes_explanation(emulator, gateway):
    dropping, refusing = emulator(models=["m"]), emulator(models=["r"])
    dropping.set_faults(drop_after=2)
    refusing.set_faults(refuse=True)
    gw = gateway([ExplainingRoute("pool", [Upstream("d", dropping.url, "ollama", ("m",)),
                                           Upstream("r", refusing.url, "ollama", ("r",))])])
    with httpx.stream("POST", gw.url + "/api/chat", json=CHAT, timeout=30) as reply:
        last = json.loads([line for line in reply.iter_lines() if line.strip()][-1])
    assert last["error"].endswith("(shard of d died)")
    refused = httpx.post(gw.url + "/api/chat", json={**CHAT, "model": "r"}, timeout=30)
    assert refused.status_code == 503 and "shard of r died" in refused.json()["error"]


def test_client_leaving_a_non_streamed_request_cancels_it_upstream(emulator, gateway):
    node = emulator(models=["m"])
    node.set_faults(hang=True)
    route = StaticRoute("pool", [Upstream("hang", node.url, "ollama", ("m",))])
    gw = gateway([route])  # request_timeout stays at its default (minutes)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gw.url + "/api/generate", json={"model": "m", "prompt": "x", "stream": False},
                   timeout=1.0)
    _wait(lambda: route.outcomes)
    backend, outcome = route.outcomes[0]
    assert backend == "hang" and not outcome.ok and outcome.status == 499
    assert route.in_flight["hang"] == 0
    events = httpx.get(gw.url + "/sollol/events").json()["events"]  # dashboards see it too
    cut = [e for e in events if e["status"] == 499]
    assert [(e["backend"], e["model"], e["ok"]) for e in cut] == [("hang", "m", False)]
