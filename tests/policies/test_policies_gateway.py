"""Policies behind the real gateway: requests to emulated Ollama nodes follow the configured
policy (a third-party one and the bundled ones), the route headers carry the explanation, and
`sollol route --gateway` reads the gateway's decision endpoint."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from click.testing import CliRunner
from sollol_plugins.policies import pinned, size_threshold
from sollol_plugins.policies.command import route_command

from sollol.models import ModelInfo, RouteDecision, RouteRequest, RouteState
from sollol.testing.static_route import StaticRoute, Upstream

BOTH = {"model_sharding_enabled": True, "task_distribution_enabled": True}


class BigToSharding:
    """A third-party test policy: model names starting with "big" are sharded."""

    name = "big-to-sharding"

    def decide(self, request: RouteRequest, model: ModelInfo | None,
               routes: Mapping[str, RouteState]) -> RouteDecision:
        route = "sharding" if request.model.startswith("big") else "pool"
        return RouteDecision(route, self.name, f"{request.model} -> {route} (test rule)",
                             numbers={"length": len(request.model)})


def chat(url: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False}
    return httpx.post(url + "/api/chat", json=body, timeout=30)


def route_of(response: httpx.Response) -> dict[str, str]:
    return {key: unquote(response.headers.get(f"x-sollol-{key}", ""))
            for key in ("route", "backend", "policy", "reason")}


@pytest.fixture
def two_routes(emulator: Any) -> tuple[StaticRoute, StaticRoute]:
    models = ("small:1b", "big:70b", "m:latest")
    pool = emulator(models=list(models), name="pool-node")
    shard = emulator(models=list(models), name="shard-node")
    return (StaticRoute("pool", [Upstream("p1", pool.url, "ollama", models),
                                 Upstream("p2", pool.url, "ollama", models)]),
            StaticRoute("sharding", [Upstream("s1", shard.url, "ollama", models)]))


def test_requests_follow_a_plugin_policy_chosen_by_config(two_routes: Any, gateway: Any) -> None:
    pool, sharding = two_routes
    gw = gateway([pool, sharding], {"big-to-sharding": lambda settings: BigToSharding()},
                 routing_policy="big-to-sharding", **BOTH)
    big, small = chat(gw.url, "big:70b"), chat(gw.url, "small:1b")
    assert big.status_code == small.status_code == 200
    assert route_of(big) == {"route": "sharding", "backend": "s1", "policy": "big-to-sharding",
                             "reason": "big:70b -> sharding (test rule)"}
    assert route_of(small)["route"] == "pool"
    assert [backend for backend, _ in sharding.outcomes] == ["s1"]
    assert len(pool.outcomes) == 1


def test_pins_route_requests_to_a_node_through_the_gateway(two_routes: Any, gateway: Any) -> None:
    pool, sharding = two_routes
    settings = {"pinned": {"models": {"m": "p2", "big*": "sharding"}}}
    gw = gateway([pool, sharding], {"pinned": pinned, "size-threshold": size_threshold},
                 routing_policy="pinned", policy_settings=settings, **BOTH)
    for _ in range(3):
        response = chat(gw.url, "m")
        assert response.status_code == 200
        assert route_of(response)["backend"] == "p2"
    assert route_of(chat(gw.url, "big:70b"))["route"] == "sharding"
    unpinned = route_of(chat(gw.url, "small:1b"))
    assert unpinned["route"] == "pool" and unpinned["policy"] == "pinned"
    assert "no pin matches small:1b, so size-threshold decides" in unpinned["reason"]
    assert [backend for backend, _ in pool.outcomes][:3] == ["p2", "p2", "p2"]

    answer = httpx.get(gw.url + "/sollol/route", params={"model": "m", "ctx": 2048}).json()
    assert (answer["route"], answer["backend"], answer["numbers"]["pin"]) == ("pool", "p2", "m")
    result = CliRunner().invoke(route_command, ["m", "--ctx", "2048", "--gateway", gw.url])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("m -> pool (backend p2), by policy pinned\n")


def test_a_503_states_its_reason_at_the_gateway(two_routes: Any, gateway: Any) -> None:
    settings = {"size-threshold": {"unknown": "error"}}
    gw = gateway(list(two_routes), {"size-threshold": size_threshold},
                 routing_policy="size-threshold", policy_settings=settings, **BOTH)
    response = chat(gw.url, "small:1b")
    assert response.status_code == 503
    assert "parameter count of small:1b is unknown" in response.json()["error"]

    result = CliRunner().invoke(route_command, ["small:1b", "--json", "--gateway", gw.url])
    assert result.exit_code == 1
    answer = json.loads(result.output)
    assert answer["status"] == 503
    assert "policy_settings.size-threshold.unknown" in answer["error"]
