"""`/metrics`: the recorder's numbers and the cluster's state in Prometheus' text format."""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from sollol import __version__
from sollol.core.router import SHARDING
from sollol.observe.histogram import Histogram
from sollol.observe.recorder import Recorder

if TYPE_CHECKING:
    from sollol.core.runtime import ClusterRuntime

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""The classic text format: every Prometheus version reads it (our names need no escaping)."""


class GatewayCollector(Collector):
    """Collects at scrape time: request metrics from the recorder, state from the routes."""

    def __init__(self, recorder: Recorder, cluster: ClusterRuntime,
                 running: Callable[[], int]) -> None:
        self.recorder = recorder
        self.cluster = cluster
        self.running = running

    def collect(self) -> Iterator[Metric]:
        r = self.recorder
        requests = CounterMetricFamily(
            "sollol_requests", "Requests finished, by route, node, model and HTTP status code.",
            labels=["route", "node", "model", "code"])
        for labels, count in r.requests.items():
            requests.add_metric(list(labels), count)
        yield requests
        yield _histograms("sollol_request_duration_seconds",
                          "Seconds from a request's arrival to its last byte.", r.duration)
        yield _histograms("sollol_time_to_first_token_seconds",
                          "Seconds from a streamed request's arrival to its first token.",
                          r.first_token)
        yield _histograms("sollol_time_per_output_token_seconds",
                          "Seconds per generated token after the first (whole replies: upstream "
                          "seconds per token).", r.per_token)
        overhead = HistogramMetricFamily(
            "sollol_gateway_overhead_seconds",
            "Seconds of a request spent in the gateway itself: not upstream, not queued.",
            labels=["route"])
        for route, hist in r.overhead.items():
            overhead.add_metric([route], hist.cumulative(), hist.total)
        yield overhead
        yield _counters("sollol_prompt_tokens", "Prompt tokens backends reported reading.",
                        r.prompt_tokens)
        yield _counters("sollol_generation_tokens", "Tokens backends reported generating.",
                        r.generation_tokens)
        rejected = CounterMetricFamily(
            "sollol_queue_rejections", "Requests refused with 429 because a queue was full or "
            "no slot freed in time.", labels=["route"])
        for route, count in r.rejections.items():
            rejected.add_metric([route], count)
        yield rejected
        failovers = CounterMetricFamily(
            "sollol_failovers", "Requests moved to another backend after a failed attempt, by "
            "why the attempt failed.", labels=["reason"])
        for reason, count in r.failovers.items():
            failovers.add_metric([reason], count)
        yield failovers
        yield from self._state()
        info = GaugeMetricFamily("sollol_build_info", "SOLLOL's version (the value is always 1).",
                                 labels=["version", "python"])
        info.add_metric([__version__, platform.python_version()], 1)
        yield info

    def _state(self) -> Iterator[Metric]:
        snapshots = {name: dict(p.snapshot()) for name, p in self.cluster.routes.items()}
        waiting = sum(int((s.get("queue") or {}).get("waiting") or 0) for s in snapshots.values())
        running = GaugeMetricFamily("sollol_requests_running",
                                    "Requests the gateway is serving (not counting queued ones).")
        running.add_metric([], max(self.running() - waiting, 0))
        yield running
        queued = GaugeMetricFamily("sollol_requests_waiting",
                                   "Requests queued for a free backend slot.")
        queued.add_metric([], waiting)
        yield queued
        node_up = GaugeMetricFamily("sollol_node_up", "1 when a node can take requests (healthy "
                                    "and not ejected), else 0.", labels=["route", "node"])
        backend_up = GaugeMetricFamily("sollol_rpc_backend_up", "1 when an rpc-server is healthy "
                                       "(or held by a live coordinator), else 0.",
                                       labels=["backend"])
        for name, state in self.cluster.route_states().items():
            for b in state.backends:
                if name == SHARDING:
                    backend_up.add_metric([b.backend.address], int(b.healthy))
                else:
                    node_up.add_metric([name, b.backend.id], int(b.healthy))
        yield node_up
        yield backend_up
        starts = CounterMetricFamily("sollol_coordinator_starts", "llama-server coordinators "
                                     "started, by model (a restart counts as a start).",
                                     labels=["model"])
        per_model: dict[str, int] = {}
        for snapshot in snapshots.values():
            for model, count in (snapshot.get("coordinator_starts") or {}).items():
                label = self.recorder.models.fold(model)
                per_model[label] = per_model.get(label, 0) + int(count)
        for model, count in per_model.items():
            starts.add_metric([model], count)
        yield starts


def _histograms(name: str, text: str, table: dict[tuple[str, str], Histogram]) -> Metric:
    family = HistogramMetricFamily(name, text, labels=["route", "model"])
    for labels, hist in table.items():
        family.add_metric(list(labels), hist.cumulative(), hist.total)
    return family


def _counters(name: str, text: str, table: dict[tuple[str, str], int]) -> Metric:
    family = CounterMetricFamily(name, text, labels=["route", "model"])
    for labels, count in table.items():
        family.add_metric(list(labels), count)
    return family


def make_registry(recorder: Recorder, cluster: ClusterRuntime,
                  running: Callable[[], int]) -> CollectorRegistry:
    """A registry of its own per gateway (several may run in one process, e.g. in tests)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(recorder, cluster, running))
    ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


__all__ = ["CONTENT_TYPE", "GatewayCollector", "make_registry", "render"]
