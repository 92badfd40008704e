"""Turns every finished request (a `RouteEvent`) into counters, histograms and history."""

from __future__ import annotations

import time
from typing import Any

import attrs

from sollol.core.router import SHARDING
from sollol.hookspecs import hookimpl
from sollol.models import RouteEvent
from sollol.observe.histogram import DURATION, FIRST_TOKEN, OVERHEAD, PER_TOKEN, Histogram
from sollol.observe.history import History
from sollol.observe.labels import OTHER, BoundedLabels

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

    def add(self, event: RouteEvent, speed: float | None) -> None:
        self.requests += 1
        self.last_status = event.status
        if not event.ok and event.status != 499:  # a client that left is not the node's error
            self.errors += 1
            self.last_error = (event.error or f"HTTP {event.status}")[:500]
            self.last_error_at = event.time
        if speed is not None:
            old = self.tokens_per_second
            self.tokens_per_second = speed if old is None else old + SPEED_WEIGHT * (speed - old)

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define(eq=False, slots=True)
class _Series:
    """One (route, model) label pair: its histograms and token counters."""

    duration: Histogram = attrs.field(factory=lambda: Histogram(DURATION))
    first_token: Histogram | None = None
    per_token: Histogram | None = None
    prompt_tokens: int = 0
    generation_tokens: int = 0


@attrs.define(eq=False, slots=True)
class _Cell:
    """One `sollol_requests_total` series, with everything else a request of it updates."""

    key: tuple[str, str, str, str]
    series: _Series
    overhead: Histogram
    stats: NodeStats | None
    count: int = 0


FAST_CACHE = 4096
"""Raw (route, model, backend, status) combinations remembered with their labels resolved."""


@attrs.define(eq=False)
class Recorder:
    """A plugin object, registered per gateway on its cluster's plugin manager.

    Everything is plain numbers updated on the event loop's thread; the Prometheus collector
    (`sollol.observe.exposition`) reads them at scrape time. A request of a combination seen
    before costs one dictionary lookup to find all it updates (docs/performance.md).
    """

    max_models: int = 50
    max_nodes: int = 256
    models: BoundedLabels = attrs.field(init=False)
    nodes: BoundedLabels = attrs.field(init=False)
    series: dict[tuple[str, str], _Series] = attrs.field(factory=dict)
    overhead: dict[str, Histogram] = attrs.field(factory=dict)
    rejections: dict[str, int] = attrs.field(factory=dict)
    failovers: dict[str, int] = attrs.field(factory=dict)
    node_stats: dict[str, NodeStats] = attrs.field(factory=dict)
    history: History = attrs.field(factory=History)
    started_at: float = attrs.field(factory=time.time)
    _cells: dict[tuple[str, str, str, str], _Cell] = attrs.field(factory=dict)
    _fast: dict[tuple[str, str, str | None, int], _Cell] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        self.models = BoundedLabels(self.max_models)
        self.nodes = BoundedLabels(self.max_nodes)

    @hookimpl
    def sollol_request_routed(self, event: RouteEvent) -> None:
        self.observe(event)

    def observe(self, event: RouteEvent) -> None:
        cell = self._fast.get((event.route, event.model, event.backend, event.status))
        if cell is None:
            cell = self._cell(event)
        cell.count += 1
        series = cell.series
        duration = event.duration_s
        series.duration.observe(duration)
        overhead = duration - event.upstream_s - event.wait_s
        cell.overhead.observe(overhead if overhead > 0 else 0.0)
        if event.ttft_s is not None:
            if series.first_token is None:
                series.first_token = Histogram(FIRST_TOKEN)
            series.first_token.observe(event.ttft_s)
        prompt = _count(event.prompt_tokens)
        if prompt:
            series.prompt_tokens += prompt
        tokens = _count(event.tokens)
        speed = None
        if tokens:
            series.generation_tokens += tokens
            seconds, per = generation_seconds(event, tokens)
            if per is not None:
                if series.per_token is None:
                    series.per_token = Histogram(PER_TOKEN)
                series.per_token.observe(per)
            if seconds:
                speed = tokens / seconds
        if event.status == 429:
            self.rejections[cell.key[0]] = self.rejections.get(cell.key[0], 0) + 1
        for reason in event.failovers:
            self.failovers[reason] = self.failovers.get(reason, 0) + 1
        if cell.stats is not None:
            cell.stats.add(event, speed)
        self.history.add(event.time, event.ok, duration, tokens)

    def _cell(self, event: RouteEvent) -> _Cell:
        """Resolve a combination's labels (bounded), and remember it unless it folded."""
        route = event.route or NONE
        # a name becomes a label only once a backend served it: made-up names share "other"
        model = self.models.fold(event.model, admit=event.backend is not None
                                 and event.status != 404)
        node = self.node_label(event)
        key = (route, node, model, str(event.status))
        cell = self._cells.get(key)
        if cell is None:
            series = self.series.get((route, model))
            if series is None:
                series = self.series[route, model] = _Series()
            overhead = self.overhead.get(route)
            if overhead is None:
                overhead = self.overhead[route] = Histogram(OVERHEAD)
            stats = None
            if event.backend is not None:
                stats = self.node_stats.get(node)
                if stats is None and len(self.node_stats) <= self.max_nodes:
                    stats = self.node_stats[node] = NodeStats()
            cell = self._cells[key] = _Cell(key, series, overhead, stats)
        # a name that folded into "other" may still earn its own label: do not pin it there
        if model != OTHER and len(self._fast) < FAST_CACHE:
            self._fast[event.route, event.model, event.backend, event.status] = cell
        return cell

    def node_label(self, event: RouteEvent) -> str:
        backend = event.backend
        if not backend:
            return NONE
        if event.route == SHARDING:
            # a coordinator's id carries its port, which changes with every restart
            backend = backend.rpartition("@")[0] or backend
        return self.nodes.fold(backend)

    # ---- read side (scrapes and the overview; never on the request path)

    @property
    def requests(self) -> dict[tuple[str, str, str, str], int]:
        return {key: cell.count for key, cell in self._cells.items()}

    @property
    def duration(self) -> dict[tuple[str, str], Histogram]:
        return {key: s.duration for key, s in self.series.items()}

    @property
    def first_token(self) -> dict[tuple[str, str], Histogram]:
        return {key: s.first_token for key, s in self.series.items() if s.first_token}

    @property
    def per_token(self) -> dict[tuple[str, str], Histogram]:
        return {key: s.per_token for key, s in self.series.items() if s.per_token}

    @property
    def prompt_tokens(self) -> dict[tuple[str, str], int]:
        return {key: s.prompt_tokens for key, s in self.series.items() if s.prompt_tokens}

    @property
    def generation_tokens(self) -> dict[tuple[str, str], int]:
        return {key: s.generation_tokens for key, s in self.series.items()
                if s.generation_tokens}

    def totals(self) -> dict[str, Any]:
        """Whole-gateway sums for the overview."""
        cells = self._cells.values()
        return {"requests": sum(c.count for c in cells),
                "errors": sum(c.count for c in cells if int(c.key[3]) >= 400),
                "prompt_tokens": sum(s.prompt_tokens for s in self.series.values()),
                "generation_tokens": sum(s.generation_tokens for s in self.series.values()),
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
    row = {"time": event.time, "model": event.model, "endpoint": event.endpoint,
           "api": event.api, "route": event.route, "policy": event.policy,
           "reason": event.reason, "backend": event.backend, "status": event.status,
           "ok": event.ok, "duration_s": event.duration_s, "attempts": event.attempts,
           "tokens": event.tokens, "prompt_tokens": event.prompt_tokens, "error": event.error,
           "ttft_s": event.ttft_s, "upstream_s": event.upstream_s, "wait_s": event.wait_s,
           "failovers": list(event.failovers)}  # (attrs.asdict is ten times slower)
    tokens = _count(event.tokens)
    seconds = generation_seconds(event, tokens)[0] if tokens else None
    row["tokens_per_second"] = round(tokens / seconds, 2) if tokens and seconds else None
    return row


def _count(value: object) -> int:
    """A token count a backend reported, or 0 when it is missing or not a sane number."""
    if value.__class__ is int and 0 < value < 1 << 40:  # type: ignore[operator]  (not a bool)
        return value  # type: ignore[return-value]
    return 0
