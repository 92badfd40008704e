"""The hybrid router's mode matrix through the gateway: each cell shows where a request went
(the `X-Sollol-*` headers, and which test node actually received it)."""

from __future__ import annotations

from urllib.parse import unquote

import httpx
import pytest

from sollol.core.router import POOL, SHARDING
from sollol.errors import NoRouteAvailable
from sollol.models import RouteDecision
from sollol.testing.static_route import StaticRoute, Upstream

MODELS = ("small", "big")


class BySize:
    """A test policy: "big" models are sharded, the rest go to the pool (with its numbers)."""

    name = "by-size"

    def __init__(self, settings):
        self.big = set(settings.get("big", ["big"]))

    def decide(self, request, model, routes):
        if request.model == "huge":
            raise NoRouteAvailable("huge fits nowhere", numbers={"need_bytes": 10**12})
        if request.model in self.big:
            if not routes[SHARDING].available:
                raise NoRouteAvailable("sharding is down")
            return RouteDecision(SHARDING, self.name, f"{request.model} is big",
                                 numbers={"context": request.context_length})
        return RouteDecision(POOL, self.name, f"{request.model} fits one node (ünïcode)")


@pytest.fixture
def cluster_nodes(emulator, scripted_node):
    first, second = emulator(models=list(MODELS)), emulator(models=list(MODELS))
    shard = scripted_node(api="openai")  # llama-server speaks the OpenAI dialect
    return first, second, shard


@pytest.fixture
def start(cluster_nodes, gateway):
    first, second, shard = cluster_nodes

    def run(**config):
        pool = StaticRoute(POOL, [Upstream("node-a", first.url, "ollama", MODELS),
                                  Upstream("node-b", second.url, "ollama", MODELS)])
        sharding = StaticRoute(SHARDING, [Upstream("coordinator", shard.url, "openai", MODELS)])
        return gateway([pool, sharding], {"by-size": BySize}, routing_policy="by-size", **config)

    return run


def _chat(gw, model, **extra):
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False}
    reply = httpx.post(gw.url + "/api/chat", json={**body, **extra}, timeout=30)
    assert reply.status_code == 200, reply.text
    return reply


def test_both_off_sends_everything_to_the_single_node(start, cluster_nodes):
    first, second, shard = cluster_nodes
    gw = start(model_sharding_enabled=False, task_distribution_enabled=False)
    for model in MODELS:
        reply = _chat(gw, model)
        assert reply.headers["x-sollol-route"] == POOL
        assert reply.headers["x-sollol-backend"] == "node-a"
        assert reply.headers["x-sollol-policy"] == "mode"
    assert first.stats()["total"] == 2 and second.stats()["total"] == 0 and not shard.requests


def test_sharding_only_sends_everything_to_the_coordinator(start, cluster_nodes):
    first, second, shard = cluster_nodes
    gw = start(model_sharding_enabled=True, task_distribution_enabled=False)
    for model in MODELS:
        reply = _chat(gw, model)
        assert reply.headers["x-sollol-route"] == SHARDING
        assert reply.headers["x-sollol-backend"] == "coordinator"
        assert reply.json()["message"]["content"]  # translated from the OpenAI dialect
    assert len(shard.requests) == 2
    assert first.stats()["total"] == second.stats()["total"] == 0


def test_distribution_only_sends_everything_to_the_pool(start, cluster_nodes):
    first, second, shard = cluster_nodes
    gw = start(model_sharding_enabled=False, task_distribution_enabled=True)
    for model in MODELS:
        reply = _chat(gw, model)
        assert reply.headers["x-sollol-route"] == POOL
        assert reply.headers["x-sollol-backend"] in ("node-a", "node-b")
        assert "distribution" in reply.headers["x-sollol-reason"]
    assert first.stats()["total"] + second.stats()["total"] == 2 and not shard.requests


def test_both_on_lets_the_policy_decide_per_request(start, cluster_nodes):
    first, second, shard = cluster_nodes
    gw = start(model_sharding_enabled=True, task_distribution_enabled=True)
    small, big = _chat(gw, "small"), _chat(gw, "big")
    assert small.headers["x-sollol-route"] == POOL
    assert small.headers["x-sollol-policy"] == "by-size"
    assert unquote(small.headers["x-sollol-reason"]) == "small fits one node (ünïcode)"
    assert small.headers["x-sollol-reason"].isascii()
    assert big.headers["x-sollol-route"] == SHARDING
    assert big.headers["x-sollol-backend"] == "coordinator"
    assert len(shard.requests) == 1 and first.stats()["total"] + second.stats()["total"] == 1


def test_route_endpoint_explains_a_decision_without_sending_anything(start, cluster_nodes):
    first, second, shard = cluster_nodes
    gw = start(model_sharding_enabled=True, task_distribution_enabled=True)
    decision = httpx.get(gw.url + "/sollol/route", params={"model": "big", "ctx": 4096}).json()
    assert decision["route"] == SHARDING and decision["policy"] == "by-size"
    assert decision["reason"] == "big is big" and decision["numbers"] == {"context": 4096}
    assert decision["context_length"] == 4096
    assert not shard.requests and first.stats()["total"] == second.stats()["total"] == 0
    bad = httpx.get(gw.url + "/sollol/route", params={"model": "big", "ctx": "lots"})
    assert bad.status_code == 400 and "ctx" in bad.json()["error"]
    assert httpx.get(gw.url + "/sollol/route").status_code == 400
    refused = httpx.get(gw.url + "/sollol/route", params={"model": "huge"})
    assert refused.status_code == 503 and refused.headers["retry-after"]
    assert refused.json() == {"error": "huge fits nowhere", "numbers": {"need_bytes": 10**12}}


def test_sollol_state_routes_nodes_and_events(start):
    gw = start(model_sharding_enabled=True, task_distribution_enabled=True)
    _chat(gw, "big")
    state = httpx.get(gw.url + "/sollol/state").json()
    assert state["policy"] == "by-size" and set(state["routes"]) == {POOL, SHARDING}
    assert state["modes"] == {"model_sharding_enabled": True, "task_distribution_enabled": True}
    pool = httpx.get(gw.url + "/sollol/routes/pool").json()
    assert [n["id"] for n in pool["nodes"]] == ["node-a", "node-b"]
    assert httpx.get(gw.url + "/sollol/nodes").json() == pool
    missing = httpx.get(gw.url + "/sollol/routes/nope")
    assert missing.status_code == 404 and "pool" in missing.json()["error"]
    events = httpx.get(gw.url + "/sollol/events").json()["events"]
    assert events[-1]["route"] == SHARDING and events[-1]["backend"] == "coordinator"
    assert events[-1]["ok"] and events[-1]["model"] == "big"
