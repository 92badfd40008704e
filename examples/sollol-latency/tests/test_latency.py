"""The latency policy: what it learns, how it decides, and a gateway that routes with it."""

from __future__ import annotations

import httpx
import pytest
from sollol_latency import LatencyPolicy, LatencyTracker, plugin

from sollol.errors import ConfigError, NoRouteAvailable
from sollol.models import Backend, BackendState, RouteEvent, RouteRequest, RouteState


def event(route: str, seconds: float, *, model: str = "m", tokens: int = 10, ok: bool = True,
          status: int = 200) -> RouteEvent:
    return RouteEvent(model=model, endpoint="chat", api="ollama", route=route, policy="latency",
                      reason="", backend=f"{route}-1", status=status, ok=ok, duration_s=seconds,
                      tokens=tokens)


def routes(*healthy: str, down: tuple[str, ...] = ()) -> dict[str, RouteState]:
    def state(name: str, up: bool) -> RouteState:
        return RouteState(name, (BackendState(Backend(f"{name}-1", "t", "127.0.0.1:1"), up),))

    return {**{n: state(n, True) for n in healthy}, **{n: state(n, False) for n in down}}


def test_the_tracker_keeps_a_moving_average_per_route_and_model() -> None:
    tracker = LatencyTracker(alpha=0.5)
    tracker.observe(event("pool", 10.0))  # a cold first request: replaced by the next one
    tracker.observe(event("pool", 1.0))  # 0.1 s/token
    tracker.observe(event("pool", 3.0))  # 0.3 s/token -> 0.2
    tracker.observe(event("pool", 9.0, model="other"))
    assert tracker.estimate("pool", "m") == pytest.approx(0.2)
    assert tracker.estimate("pool", "other") == pytest.approx(0.9)
    assert tracker.estimate("sharding", "m") is None


def test_failures_look_slow_and_client_disconnects_are_ignored() -> None:
    tracker = LatencyTracker(alpha=1.0, failure_seconds=30.0)
    tracker.observe(event("pool", 0.5, ok=False, status=502))
    assert tracker.estimate("pool", "m") == 30.0
    tracker.observe(event("sharding", 0.1, ok=False, status=499))
    assert tracker.estimate("sharding", "m") is None


def test_memory_is_bounded_by_max_models() -> None:
    tracker = LatencyTracker(max_models=3)
    for i in range(100):
        tracker.observe(event("pool", 1.0, model=f"m{i}" * 1000))
    assert [tracker.estimate("pool", f"m{i}" * 1000) is not None for i in (96, 97, 98, 99)] \
        == [False, True, True, True]


def test_an_unmeasured_route_is_tried_first_then_the_fastest_wins() -> None:
    policy = LatencyPolicy(LatencyTracker(alpha=1.0), explore_every=0)
    both = routes("pool", "sharding")
    policy.tracker.observe(event("pool", 1.0))
    first = policy.decide(RouteRequest("m"), None, both)
    assert first.route == "sharding" and "no latency measured" in first.reason
    policy.tracker.observe(event("sharding", 0.2))
    decision = policy.decide(RouteRequest("m"), None, both)
    assert (decision.route, decision.policy) == ("sharding", "latency")
    assert decision.numbers["seconds_per_token"] == {"pool": 0.1, "sharding": 0.02}


def test_every_nth_decision_re_measures_the_runner_up() -> None:
    policy = LatencyPolicy(LatencyTracker(alpha=1.0), explore_every=5)
    for seconds in (1.0, 1.0):
        policy.tracker.observe(event("pool", seconds))
        policy.tracker.observe(event("sharding", 5 * seconds))
    chosen = [policy.decide(RouteRequest("m"), None, routes("pool", "sharding")).route
              for _ in range(10)]
    assert chosen.count("sharding") == 2 and chosen[4] == chosen[9] == "sharding"


def test_down_routes_are_never_chosen() -> None:
    policy = LatencyPolicy(LatencyTracker())
    assert policy.decide(RouteRequest("m"), None, routes("pool", down=("sharding",))).route \
        == "pool"
    with pytest.raises(NoRouteAvailable, match="no route has a healthy backend"):
        policy.decide(RouteRequest("m"), None, routes(down=("pool", "sharding")))


@pytest.mark.parametrize("settings", [{"alpha": 2}, {"alpha": "fast"}, {"explore_every": -1},
                                      {"max_models": True}, {"typo": 1}])
def test_bad_settings_are_config_errors(settings: dict) -> None:
    with pytest.raises(ConfigError):
        LatencyPolicy.from_settings(settings)


def test_only_the_cluster_whose_policy_it_is_learns() -> None:
    class FakeCluster:
        def __init__(self, policy: object) -> None:
            self.policy = policy

    mine = LatencyPolicy(LatencyTracker())
    plugin.sollol_request_routed(event("pool", 1.0), FakeCluster(mine))
    plugin.sollol_request_routed(event("pool", 9.0), FakeCluster(object()))
    assert mine.tracker.estimate("pool", "m") == pytest.approx(0.1)


def test_the_gateway_learns_to_send_requests_to_the_faster_route(sollol_gateway, emulator) -> None:
    """Two routes over emulated Ollama nodes, one 20x slower: after a few requests the installed
    plugin sends nearly everything to the fast one (and re-measures the slow one now and then)."""
    from sollol.testing.static_route import RoutesPlugin, StaticRoute, Upstream

    fast = emulator(models=["m"], tokens_per_second=2000, response_tokens=12)
    slow = emulator(models=["m"], tokens_per_second=100, response_tokens=12)
    for node in (fast, slow):  # loaded: the policy compares generation, not a cold load
        node.set_loaded("m", True)
    test_routes = RoutesPlugin([StaticRoute("pool", [Upstream("fast", fast.url, models=("m",))]),
                                StaticRoute("sharding", [Upstream("slow", slow.url,
                                                                  models=("m",))])])
    gateway = sollol_gateway(plugins=["latency"], register=[test_routes],
                             model_sharding_enabled=True, task_distribution_enabled=True,
                             routing_policy="latency",
                             policy_settings={"latency": {"explore_every": 5}})
    seen, reasons = [], []
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        for _ in range(30):
            reply = client.post("/api/generate", json={"model": "m", "prompt": "hi",
                                                       "stream": False})
            assert reply.status_code == 200, reply.text
            assert reply.headers["x-sollol-policy"] == "latency"
            seen.append(reply.headers["x-sollol-route"])
            reasons.append(reply.headers["x-sollol-reason"])
    assert seen[:2].count("sharding") == 1  # each route measured once at the start
    # By then each route has been measured at least twice (the cold first sample is replaced):
    # the fast route serves all but the re-measurements (every 5th decision).
    assert seen[-10:].count("pool") >= 7, list(zip(seen, reasons, strict=True))
    assert seen.count("pool") > 2 * seen.count("sharding")
