"""Turns every finished request (a `RouteEvent`) into counters, histograms and history."""

from __future__ import annotations

import time
from typing import Any

import attrs

from sollol.hookspecs import hookimpl
from sollol.models import RouteEvent
from sollol.observe.histogram import DURATION, FIRST_TOKEN, OVERHEAD, PER_TOKEN, Histogram
from sollol.observe.history import History
from sollol.observe.labels import BoundedLabels
from sollol.router import SHARDING

NONE = "none"
"""The route or node label of a request that never got that far (e.g. an unknown model)."""
SPEED_WEIGHT = 0.3


@attrs.define(eq=False)
class NodeStats:
    """What the requests a node served say about it (the dashboard's "last error" and speed)."""

    requests: int = 0
    errors: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    last_status: int | None = None
    tokens_per_second: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define(eq=False)
class Recorder:
    """A plugin object, registered per gateway on its cluster's plugin manager.

    Everything is plain numbers updated on the event loop's thread; the Prometheus collector
    (`sollol.observe.exposition`) reads them at scrape time.
    """

    max_models: int = 50
    max_nodes: int = 256
    models: BoundedLabels = attrs.field(init=False)
    nodes: BoundedLabels = attrs.field(init=False)
    requests: dict[tuple[str, str, str, str], int] = attrs.field(factory=dict)
    duration: dict[tuple[str, str], Histogram] = attrs.field(factory=dict)
    first_token: dict[tuple[str, str], Histogram] = attrs.field(factory=dict)
    per_token: dict[tuple[str, str], Histogram] = attrs.field(factory=dict)
    overhead: dict[str, Histogram] = attrs.field(factory=dict)
    prompt_tokens: dict[tuple[str, str], int] = attrs.field(factory=dict)
    generation_tokens: dict[tuple[str, str], int] = attrs.field(factory=dict)
    rejections: dict[str, int] = attrs.field(factory=dict)
    failovers: dict[str, int] = attrs.field(factory=dict)
    node_stats: dict[str, NodeStats] = attrs.field(factory=dict)
    history: History = attrs.field(factory=History)
    started_at: float = attrs.field(factory=time.time)

    def __attrs_post_init__(self) -> None:
        self.models = BoundedLabels(self.max_models)
        self.nodes = BoundedLabels(self.max_nodes)

    @hookimpl
    def sollol_request_routed(self, event: RouteEvent) -> None:
        self.observe(event)

    def observe(self, event: RouteEvent) -> None:
        route = event.route or NONE
        # a name becomes a label only once a backend served it: made-up names share "other"
        model = self.models.fold(event.model, admit=event.backend is not None
                                 and event.status != 404)
        node = self.node_label(event)
        key = (route, node, model, str(event.status))
        self.requests[key] = self.requests.get(key, 0) + 1
        series = (route, model)
        _histogram(self.duration, series, DURATION).observe(event.duration_s)
        overhead = event.duration_s - event.upstream_s - event.wait_s
        _histogram(self.overhead, route, OVERHEAD).observe(max(overhead, 0.0))
        if event.ttft_s is not None:
            _histogram(self.first_token, series, FIRST_TOKEN).observe(event.ttft_s)
        tokens = _count(event.tokens)
        prompt = _count(event.prompt_tokens)
        if prompt:
            self.prompt_tokens[series] = self.prompt_tokens.get(series, 0) + prompt
        speed = None
        if tokens:
            self.generation_tokens[series] = self.generation_tokens.get(series, 0) + tokens
            seconds, per = generation_seconds(event, tokens)
            if per is not None:
                _histogram(self.per_token, series, PER_TOKEN).observe(per)
            if seconds:
                speed = tokens / seconds
        if event.status == 429:
            self.rejections[route] = self.rejections.get(route, 0) + 1
        for reason in event.failovers:
            self.failovers[reason] = self.failovers.get(reason, 0) + 1
        if event.backend is not None:
            self._node(node, event, speed)
        self.history.add(event.time, event.ok, event.duration_s, tokens)

    def node_label(self, event: RouteEvent) -> str:
        backend = event.backend
        if not backend:
            return NONE
        if event.route == SHARDING:
            # a coordinator's id carries its port, which changes with every restart
            backend = backend.rpartition("@")[0] or backend
        return self.nodes.fold(backend)

    def _node(self, node: str, event: RouteEvent, speed: float | None) -> None:
        stats = self.node_stats.get(node)
        if stats is None:
            if len(self.node_stats) > self.max_nodes:
                return
            stats = self.node_stats[node] = NodeStats()
        stats.requests += 1
        stats.last_status = event.status
        if not event.ok and event.status != 499:  # a client that left is not the node's error
            stats.errors += 1
            stats.last_error = (event.error or f"HTTP {event.status}")[:500]
            stats.last_error_at = event.time
        if speed is not None:
            old = stats.tokens_per_second
            stats.tokens_per_second = speed if old is None else old + SPEED_WEIGHT * (speed - old)

    def totals(self) -> dict[str, Any]:
        """Whole-gateway sums for the overview."""
        requests = sum(self.requests.values())
        errors = sum(n for (_r, _n, _m, code), n in self.requests.items() if int(code) >= 400)
        return {"requests": requests, "errors": errors,
                "prompt_tokens": sum(self.prompt_tokens.values()),
                "generation_tokens": sum(self.generation_tokens.values()),
                "failovers": sum(self.failovers.values()),
                "queue_rejections": sum(self.rejections.values())}


def generation_seconds(event: RouteEvent, tokens: int) -> tuple[float | None, float | None]:
    """(seconds spent generating, seconds per output token) for a request that made `tokens`.

    Streamed: the time after the first token, over the tokens after it. Whole replies: the time
    upstream over all tokens (it includes reading the prompt: there is no first-token moment).
    """
    if event.ttft_s is not None:
        seconds = event.duration_s - event.ttft_s
        if seconds <= 0:
            return None, None
        return seconds, (seconds / (tokens - 1) if tokens > 1 else None)
    if event.upstream_s <= 0:
        return None, None
    return event.upstream_s, event.upstream_s / tokens


def request_row(event: RouteEvent) -> dict[str, Any]:
    """A RouteEvent as the dashboard's live table and `sollol status` show it."""
    row = event.as_dict()
    tokens = _count(event.tokens)
    seconds = generation_seconds(event, tokens)[0] if tokens else None
    row["tokens_per_second"] = round(tokens / seconds, 2) if tokens and seconds else None
    return row


def _count(value: object) -> int:
    """A token count a backend reported, or 0 when it is missing or not a sane number."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1 << 40:
        return value
    return 0


def _histogram(table: dict[Any, Histogram], key: Any, bounds: tuple[float, ...]) -> Histogram:
    histogram = table.get(key)
    if histogram is None:
        histogram = table[key] = Histogram(bounds)
    return histogram
