"""`/metrics` after known traffic, read back with Prometheus' own text parser."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from sollol.errors import Overloaded
from sollol.models import RouteEvent
from sollol.observe import OTHER, Recorder
from sollol.observe.exposition import make_registry, render
from sollol.testing.static_route import StaticRoute, Upstream

MODEL = "llama3.2:1b"


def scrape(url: str) -> dict[str, list[Any]]:
    """Samples by name, parsed by the Prometheus client's own parser."""
    response = httpx.get(url + "/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    found = [s.value for s in samples.get(name, [])
             if all(s.labels.get(k) == v for k, v in labels.items())]
    return sum(found)


def buckets(samples: dict[str, list[Any]], name: str, **labels: str) -> list[tuple[float, float]]:
    out = [(float(s.labels["le"]), s.value) for s in samples.get(name + "_bucket", [])
           if all(s.labels.get(k) == v for k, v in labels.items())]
    return sorted(out)


def check_histogram(samples: dict[str, list[Any]], name: str, count: int,
                    observed: Iterable[float], **labels: str) -> None:
    """Cumulative buckets that end at `count`, and every bucket at or above the largest value a
    client saw holds all of them (the gateway's own times are shorter than the client's)."""
    rows = buckets(samples, name, **labels)
    assert rows, f"no {name} buckets for {labels}"
    counts = [c for _, c in rows]
    assert counts == sorted(counts), "buckets must be cumulative"
    assert rows[-1] == (float("inf"), count)
    assert value(samples, name + "_count", **labels) == count
    biggest = max(observed)
    assert all(c == count for le, c in rows if le >= biggest)
    assert 0 < value(samples, name + "_sum", **labels) <= sum(observed)


def test_metrics_after_known_traffic_on_the_pool(emulator, pool_gateway) -> None:
    nodes = [emulator(response_tokens=12), emulator(response_tokens=12)]
    gateway = pool_gateway(*(n.url for n in nodes), plugins=["ollama_pool"])
    whole, streamed, prompt_tokens = [], [], 0
    for index in range(4):
        t0 = time.perf_counter()
        reply = httpx.post(gateway.url + "/api/generate", timeout=30, json={
            "model": MODEL, "prompt": f"count to {index} please", "stream": False})
        whole.append(time.perf_counter() - t0)
        assert reply.status_code == 200
        assert reply.json()["eval_count"] == 12
        prompt_tokens += reply.json()["prompt_eval_count"]
    for _ in range(3):
        t0 = time.perf_counter()
        with httpx.stream("POST", gateway.url + "/api/chat", timeout=30, json={
                "model": MODEL, "messages": [{"role": "user", "content": "hi there"}]}) as reply:
            lines = list(reply.iter_lines())
        streamed.append(time.perf_counter() - t0)
        final = httpx.Response(200, content=lines[-1]).json()
        assert final["done"] and final["eval_count"] == 12
        prompt_tokens += final["prompt_eval_count"]
    for name in ("no-such-model", "another/made-up:tag"):
        assert httpx.post(gateway.url + "/api/generate", timeout=30, json={
            "model": name, "prompt": "x"}).status_code == 404

    samples = scrape(gateway.url)
    ok = value(samples, "sollol_requests_total", route="pool", model=MODEL, code="200")
    assert ok == 7
    per_node = {s.labels["node"] for s in samples["sollol_requests_total"]
                if s.labels["code"] == "200"}
    assert per_node <= {n.address for n in nodes}
    # unknown names share one label, and never reached a node
    assert value(samples, "sollol_requests_total", model=OTHER, code="404", node="none") == 2
    models = {s.labels["model"] for s in samples["sollol_requests_total"]}
    assert models == {MODEL, OTHER}

    check_histogram(samples, "sollol_request_duration_seconds", 7, whole + streamed,
                    route="pool", model=MODEL)
    check_histogram(samples, "sollol_time_to_first_token_seconds", 3, streamed,
                    route="pool", model=MODEL)
    assert value(samples, "sollol_time_per_output_token_seconds_count", model=MODEL) == 7
    assert value(samples, "sollol_gateway_overhead_seconds_count") == 9  # every request
    assert value(samples, "sollol_generation_tokens_total", route="pool", model=MODEL) == 7 * 12
    assert value(samples, "sollol_prompt_tokens_total", route="pool", model=MODEL) \
        == prompt_tokens
    for node in nodes:
        assert value(samples, "sollol_node_up", route="pool", node=node.address) == 1
    assert value(samples, "sollol_requests_running") == 0
    assert value(samples, "sollol_requests_waiting") == 0
    (info,) = samples["sollol_build_info"]
    assert info.value == 1 and info.labels["version"]
    assert "process_cpu_seconds_total" in samples

    nodes[1].refuse()  # the node goes away: its gauge follows its health probe
    deadline = time.monotonic() + 60
    while value(scrape(gateway.url), "sollol_node_up", node=nodes[1].address) != 0:
        assert time.monotonic() < deadline, "sollol_node_up never dropped to 0"
        time.sleep(0.2)


class _Busy(StaticRoute):
    """A static route whose model "busy" is always overloaded (a full queue)."""

    async def acquire(self, request, *, backend=None, exclude=()):
        if request.model.startswith("busy"):
            raise Overloaded("the queue is full", retry_after=1.0)
        return await super().acquire(request, backend=backend, exclude=exclude)


def test_failovers_and_queue_rejections_are_counted(emulator, gateway) -> None:
    from sollol.core.processes import free_port

    live = emulator()
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: every connect is refused
    route = _Busy("pool", [Upstream("dead", dead, "ollama", (MODEL, "busy")),
                           Upstream("live", live.url, "ollama", (MODEL, "busy"))])
    gw = gateway(routes=[route], task_distribution_enabled=True)
    for _ in range(3):
        reply = httpx.post(gw.url + "/api/generate", timeout=30,
                           json={"model": MODEL, "prompt": "hi", "stream": False})
        assert reply.status_code == 200 and reply.headers["x-sollol-backend"] == "live"
    for _ in range(2):
        assert httpx.post(gw.url + "/api/generate", timeout=30, json={
            "model": "busy", "prompt": "hi", "stream": False}).status_code == 429
    samples = scrape(gw.url)
    assert value(samples, "sollol_failovers_total", reason="connect") == 3
    assert value(samples, "sollol_failovers_total") == 3
    assert value(samples, "sollol_queue_rejections_total", route="pool") == 2
    assert value(samples, "sollol_requests_total", node="live", code="200") == 3
    assert value(samples, "sollol_requests_total", code="429") == 2


def test_metrics_off_means_no_endpoint_and_no_recorder(emulator, gateway) -> None:
    node = emulator()
    route = StaticRoute("pool", [Upstream("n", node.url, "ollama", (MODEL,))])
    gw = gateway(routes=[route], task_distribution_enabled=True, metrics_enabled=False)
    reply = httpx.get(gw.url + "/metrics", timeout=10)
    assert reply.status_code == 404 and "metrics_enabled" in reply.json()["error"]
    assert httpx.post(gw.url + "/api/generate", timeout=30, json={
        "model": MODEL, "prompt": "hi", "stream": False}).status_code == 200
    overview = httpx.get(gw.url + "/sollol/overview", timeout=10).json()
    assert overview["metrics_enabled"] is False and overview["history"] is None
    assert len(overview["recent"]) == 1  # the event log still works


def _event(model: str, served: bool, status: int = 200) -> RouteEvent:
    return RouteEvent(model=model, endpoint="chat", api="ollama", route="pool", policy="",
                      reason="", backend="node-1" if served else None, status=status,
                      ok=status < 400, duration_s=0.01, tokens=5, upstream_s=0.008)


class _NoRoutes:
    routes: dict[str, Any] = {}

    def route_states(self) -> dict[str, Any]:
        return {}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=0, max_size=300), st.booleans(),
                          st.sampled_from([200, 404, 500, 429])), max_size=120),
       st.integers(min_value=1, max_value=8))
def test_model_labels_stay_bounded_for_any_names(events, limit) -> None:
    recorder = Recorder(max_models=limit)
    for model, served, status in events:
        recorder.observe(_event(model, served, status))
    text = render(make_registry(recorder, _NoRoutes(), lambda: 0)).decode()  # type: ignore[arg-type]
    labels = {s.labels["model"] for family in text_string_to_metric_families(text)
              for s in family.samples if "model" in s.labels}
    assert len(labels - {OTHER}) <= limit
    admitted = {m for m, served, status in events if served and status != 404
                and 0 < len(m) <= 200}
    assert labels - {OTHER} <= admitted
    total = sum(s.value for family in text_string_to_metric_families(text)
                for s in family.samples if s.name == "sollol_requests_total")
    assert total == len(events)  # folding loses no request


@pytest.mark.parametrize("tokens", [None, 0, -3, True, "12", 10**15])
def test_bad_token_counts_from_a_backend_count_as_none(tokens) -> None:
    recorder = Recorder()
    recorder.observe(RouteEvent(model="m", endpoint="chat", api="ollama", route="pool",
                                policy="", reason="", backend="n", status=200, ok=True,
                                duration_s=0.1, tokens=tokens, prompt_tokens=tokens,
                                upstream_s=0.05))
    assert recorder.generation_tokens == {} and recorder.prompt_tokens == {}
    assert recorder.per_token == {}


def test_running_and_waiting_follow_the_pool_queue(emulator, pool_gateway) -> None:
    import threading

    node = emulator(latency=1.5)  # each request holds the node's only slot for a while
    gateway = pool_gateway(node.url, plugins=["ollama_pool"], pool_node_concurrency=1)
    replies: list[int] = []

    def send() -> None:
        replies.append(httpx.post(gateway.url + "/api/generate", timeout=60, json={
            "model": MODEL, "prompt": "hi", "stream": False}).status_code)

    senders = [threading.Thread(target=send) for _ in range(3)]
    for sender in senders:
        sender.start()
    deadline = time.monotonic() + 60
    while True:  # poll until the three are in: one on the node, two queued behind it
        samples = scrape(gateway.url)
        if value(samples, "sollol_requests_waiting") == 2:
            break
        assert time.monotonic() < deadline, "the queue never held two requests"
    assert value(samples, "sollol_requests_running") == 1
    for sender in senders:
        sender.join()
    assert replies == [200, 200, 200]
    samples = scrape(gateway.url)
    assert value(samples, "sollol_requests_waiting") == 0
    assert value(samples, "sollol_requests_running") == 0
    assert value(samples, "sollol_requests_total", code="200") == 3


def test_the_docs_examples_use_only_exported_names() -> None:
    """The Grafana dashboard and docs/metrics.md name only metrics `/metrics` really has."""
    import json
    import re
    from pathlib import Path

    docs = Path(__file__).resolve().parents[2] / "docs"
    text = render(make_registry(Recorder(), _NoRoutes(), lambda: 0)).decode()  # type: ignore[arg-type]
    suffixes = {"counter": ("_total",), "histogram": ("", "_bucket", "_count", "_sum"),
                "gauge": ("",)}
    exported = {f.name + suffix for f in text_string_to_metric_families(text)
                for suffix in suffixes.get(f.type, ("",))}
    grafana = json.loads((docs / "grafana-dashboard.json").read_text())
    queries = [t["expr"] for p in grafana["panels"] for t in p["targets"]]
    named = {n for q in queries for n in re.findall(r"\b(sollol_[a-z_]+)", q)}
    named |= set(re.findall(r"`(sollol_[a-z_]+)`", (docs / "metrics.md").read_text()))
    named.discard("sollol_request_routed")  # the hook the recorder implements, not a metric
    missing = sorted(n for n in named if n not in exported)
    assert not missing, f"not exported: {missing}"
    assert {"sollol_requests_total", "sollol_node_up"} <= named
