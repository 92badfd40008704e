"""Tests for the v2-policy routing policy: decisions on route snapshots, and the installed plugin."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sollol.errors import NoRouteAvailable
from sollol.models import Backend, BackendState, RouteRequest, RouteState


def state(name: str, healthy: bool) -> RouteState:
    node = Backend(f"{name}-1", "test", "127.0.0.1:1")
    return RouteState(name, (BackendState(node, healthy=healthy),))


def test_prefers_the_configured_route_when_it_is_up() -> None:
    from sollol_v2_policy import V2PolicyPolicy

    policy = V2PolicyPolicy({"prefer": "sharding"})
    routes = {"pool": state("pool", True), "sharding": state("sharding", True)}
    decision = policy.decide(RouteRequest("m"), None, routes)
    assert (decision.route, decision.policy) == ("sharding", "v2-policy")


def test_falls_back_when_the_preferred_route_is_down() -> None:
    from sollol_v2_policy import V2PolicyPolicy

    routes = {"pool": state("pool", False), "sharding": state("sharding", True)}
    decision = V2PolicyPolicy({}).decide(RouteRequest("m"), None, routes)
    assert decision.route == "sharding"
    assert "not available" in decision.reason


def test_no_usable_route_is_a_clear_error() -> None:
    from sollol_v2_policy import V2PolicyPolicy

    with pytest.raises(NoRouteAvailable):
        V2PolicyPolicy({}).decide(RouteRequest("m"), None, {"pool": state("pool", False)})


def test_sollol_lists_the_installed_plugin() -> None:
    out = subprocess.run([sys.executable, "-m", "sollol", "plugins", "--json"],
                         capture_output=True, text=True, check=True).stdout
    mine = [p for p in json.loads(out) if p["name"] == "v2-policy"]
    assert mine and "sollol_register_policies" in mine[0]["hooks"]
