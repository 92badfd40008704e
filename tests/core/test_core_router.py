"""The mode matrix, as pure logic: which route serves a request for each pair of switches."""

from __future__ import annotations

import pytest

from sollol.core.router import POOL, SHARDING, choose_route
from sollol.errors import NoRouteAvailable
from sollol.models import Backend, BackendState, RouteDecision, RouteRequest, RouteState

NODE_A = Backend(id="a", kind="ollama", address="127.0.0.1:1")
NODE_B = Backend(id="b", kind="ollama", address="127.0.0.1:2")
ROUTES = {
    POOL: RouteState(POOL, (BackendState(NODE_A, healthy=True), BackendState(NODE_B, True))),
    SHARDING: RouteState(SHARDING, ()),
}
REQUEST = RouteRequest(model="tiny")


class AlwaysSharding:
    name = "always-sharding"

    def decide(self, request, model, routes):
        return RouteDecision(SHARDING, policy=self.name, reason="test policy")


@pytest.mark.parametrize(
    ("sharding", "distribution", "route", "backend", "policy"),
    [
        (False, False, POOL, "a", "mode"),
        (True, False, SHARDING, None, "mode"),
        (False, True, POOL, None, "mode"),
        (True, True, SHARDING, None, "always-sharding"),
    ],
)
def test_mode_matrix(sharding, distribution, route, backend, policy) -> None:
    decision = choose_route(REQUEST, sharding=sharding, distribution=distribution,
                            policy=AlwaysSharding(), model=None, routes=ROUTES)
    assert (decision.route, decision.backend, decision.policy) == (route, backend, policy)
    assert decision.reason


def test_single_node_mode_without_nodes_is_503() -> None:
    with pytest.raises(NoRouteAvailable, match="no node"):
        choose_route(REQUEST, sharding=False, distribution=False, policy=None, model=None,
                     routes={POOL: RouteState(POOL, ())})


def test_missing_route_names_what_is_missing() -> None:
    with pytest.raises(NoRouteAvailable, match="'sharding' route"):
        choose_route(REQUEST, sharding=True, distribution=False, policy=None, model=None,
                     routes={POOL: ROUTES[POOL]})


def test_both_on_without_policy_is_503() -> None:
    with pytest.raises(NoRouteAvailable, match="no routing policy"):
        choose_route(REQUEST, sharding=True, distribution=True, policy=None, model=None,
                     routes=ROUTES)
