"""Per-node throughput from the backends' own Prometheus metrics (llama-server's `/metrics`).

llama-server answers `/metrics` only when started with `--metrics` (else 501); SOLLOL's own
coordinators always are. Throughput is the change in `llamacpp:tokens_predicted_total` over the
change in `llamacpp:tokens_predicted_seconds_total` between two scrapes: tokens per second of
decoding, measured by the server itself. A backend that answers 404 or 501 (no metrics) is
not asked again until its model load changes (another model list, or back from being down:
`loads`): one request per load, whose answer the overview shows. A pool node whose `/props`
said it serves no `/metrics` is not asked at all (`said_none`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

import attrs
import httpx
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from sollol.core.runtime import ClusterRuntime

log = logging.getLogger("sollol.observe")
MAX_BYTES = 1 << 20
"""A metrics page larger than this is not llama-server's (it is a few KiB): ignore it."""
SAID_NONE = "its /props says it serves no /metrics (llama-server started without --metrics)"
_WANTED = {
    "llamacpp:tokens_predicted": "tokens_predicted_total",
    "llamacpp:tokens_predicted_seconds": "tokens_predicted_seconds_total",
    "llamacpp:prompt_tokens": "prompt_tokens_total",
    "llamacpp:prompt_seconds": "prompt_seconds_total",
    "llamacpp:predicted_tokens_seconds": "predicted_tokens_seconds",
    "llamacpp:requests_processing": "requests_processing",
    "llamacpp:requests_deferred": "requests_deferred",
}


@attrs.define
class Scrape:
    """What one backend's `/metrics` said last time, and the throughput derived from it."""

    url: str
    load: str = ""
    """The backend's model load it was made for: a new load is asked afresh."""
    supported: bool | None = None
    error: str | None = None
    at: float | None = None
    values: dict[str, float] = attrs.field(factory=dict)
    tokens_per_second: float | None = None
    prompt_tokens_per_second: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "supported": self.supported, "error": self.error, "at": self.at,
                "tokens_per_second": _round(self.tokens_per_second),
                "prompt_tokens_per_second": _round(self.prompt_tokens_per_second),
                "requests_processing": self.values.get("requests_processing"),
                "requests_deferred": self.values.get("requests_deferred"),
                "tokens_predicted_total": self.values.get("tokens_predicted_total")}


def parse(text: str) -> dict[str, float]:
    """The llama-server figures we use, from a Prometheus text page."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name.removesuffix("_total")
            if name in _WANTED and not sample.labels:
                value = float(sample.value)
                if not math.isfinite(value) or value < 0:
                    raise ValueError(f"{sample.name} is {sample.value}")
                values[_WANTED[name]] = value
    return values


def _rate(new: dict[str, float], old: dict[str, float], count: str, seconds: str) -> float | None:
    """Tokens per busy second between two scrapes (None when nothing happened in between)."""
    if count not in new or seconds not in new:
        return None
    busy = new[seconds] - old.get(seconds, 0.0)
    made = new[count] - old.get(count, 0.0)
    if busy <= 0 or made < 0:  # idle, or the server restarted and its counters began again
        return None
    return made / busy


@attrs.define
class BackendMetrics:
    """Scrapes the `/metrics` of every llama-server backend of a cluster on a timer."""

    interval: float = 5.0
    timeout: float = 2.0
    scrapes: dict[str, Scrape] = attrs.field(factory=dict)
    _task: asyncio.Task[None] | None = None

    def start(self, targets: Callable[[], dict[str, str]],
              headers: Callable[[], dict[str, dict[str, str]]] | None = None,
              loads: Callable[[], dict[str, str]] | None = None,
              said_none: Callable[[], Collection[str]] | None = None) -> None:
        if self.interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._loop(targets, headers, loads, said_none),
                                             name="sollol-backend-metrics")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self, targets: Callable[[], dict[str, str]],
                    headers: Callable[[], dict[str, dict[str, str]]] | None = None,
                    loads: Callable[[], dict[str, str]] | None = None,
                    said_none: Callable[[], Collection[str]] | None = None) -> None:
        async with httpx.AsyncClient(timeout=self.timeout, trust_env=False) as client:
            while True:
                try:
                    await self.scrape(client, targets(), headers() if headers else None,
                                      loads() if loads else None,
                                      said_none() if said_none else ())
                except Exception:  # one bad round must not end the loop
                    log.exception("scraping backend metrics failed")
                await asyncio.sleep(self.interval)

    async def scrape(self, client: httpx.AsyncClient, targets: dict[str, str],
                     headers: dict[str, dict[str, str]] | None = None,
                     loads: dict[str, str] | None = None,
                     said_none: Collection[str] = ()) -> None:
        """One round over `targets` (backend id -> server root URL), concurrently; `headers`
        (backend id -> headers) carries a node's own key, `loads` (backend id -> a key of its
        model load) says when a backend without metrics is worth asking again; `said_none`:
        backends that said so themselves, never asked."""
        headers, loads = headers or {}, loads or {}
        for gone in set(self.scrapes) - set(targets):
            del self.scrapes[gone]
        due = []
        for backend, url in targets.items():
            scrape = self.scrapes.get(backend)
            load = loads.get(backend, "")
            if scrape is None or scrape.url != url or scrape.load != load:
                scrape = self.scrapes[backend] = Scrape(url, load)
            if backend in said_none:
                scrape.supported, scrape.error = False, SAID_NONE
            if scrape.supported is False:
                continue  # it said it has none: not asked again for this load
            due.append((backend, scrape))
        await asyncio.gather(*(self._one(client, s, headers.get(b)) for b, s in due))

    async def _one(self, client: httpx.AsyncClient, scrape: Scrape,
                   headers: dict[str, str] | None = None) -> None:
        try:
            response = await client.get(scrape.url.rstrip("/") + "/metrics", headers=headers)
        except httpx.HTTPError as exc:
            scrape.error = f"{type(exc).__name__}: {exc}"[:200]
            return
        if response.status_code in (404, 501):  # llama-server without --metrics, or not one
            scrape.supported = False
            scrape.error = f"GET /metrics: HTTP {response.status_code}"
            return
        if response.status_code != 200 or len(response.content) > MAX_BYTES:
            scrape.error = f"GET /metrics: HTTP {response.status_code}"
            return
        try:
            values = parse(response.text)
        except ValueError as exc:
            scrape.error = f"unreadable metrics: {exc}"[:200]
            return
        if "tokens_predicted_total" not in values:
            scrape.supported = False
            scrape.error = "no llama.cpp metrics on /metrics"
            return
        old = scrape.values
        rate = _rate(values, old, "tokens_predicted_total", "tokens_predicted_seconds_total")
        if rate is not None or not old:
            # before a second scrape: the server's own average since it started
            scrape.tokens_per_second = rate if old else _average(values)
        prompt = _rate(values, old, "prompt_tokens_total", "prompt_seconds_total")
        if prompt is not None:
            scrape.prompt_tokens_per_second = prompt
        scrape.values, scrape.supported, scrape.error, scrape.at = values, True, None, time.time()

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {backend: s.as_dict() for backend, s in self.scrapes.items()}


def _average(values: dict[str, float]) -> float | None:
    seconds = values.get("tokens_predicted_seconds_total") or 0.0
    return values["tokens_predicted_total"] / seconds if seconds > 0 else None


def _round(value: float | None) -> float | None:
    return round(value, 2) if value is not None else None


def credentials(cluster: ClusterRuntime) -> dict[str, dict[str, str]]:
    """Backend id -> its `Authorization` header, for backends that carry their own key (read
    from the routes' states: snapshots are plain data and never hold keys)."""
    found: dict[str, dict[str, str]] = {}
    for provider in cluster.routes.values():
        for state in provider.state().backends:
            if state.backend.credentials:
                found[state.backend.id] = state.backend.auth_headers()
    return found


def targets(cluster: ClusterRuntime) -> dict[str, str]:
    """The llama-server backends of a cluster: OpenAI-speaking pool nodes and coordinators."""
    found: dict[str, str] = {}
    for provider in cluster.routes.values():
        snapshot = provider.snapshot()
        for node in snapshot.get("nodes") or ():
            if node.get("api") == "openai" and node.get("url"):
                found[str(node["id"])] = str(node["url"])
        for coord in snapshot.get("coordinators") or ():
            if coord.get("state") == "ready" and coord.get("url"):
                found[str(coord["id"])] = str(coord["url"])
    return found


def said_none(cluster: ClusterRuntime) -> set[str]:
    """Pool nodes whose `/props` said they serve no `/metrics` (the pool's `unserved`)."""
    return {str(node.get("id")) for provider in cluster.routes.values()
            for node in provider.snapshot().get("nodes") or ()
            if "/metrics" in (node.get("unserved") or ())}


def loads(cluster: ClusterRuntime) -> dict[str, str]:
    """Backend id -> a key of its model load: pool nodes' models and when they came up,
    coordinators' model and start (a backend without metrics is asked again when it changes)."""
    found: dict[str, str] = {}
    for provider in cluster.routes.values():
        snapshot = provider.snapshot()
        for node in snapshot.get("nodes") or ():
            found[str(node.get("id"))] = f"{node.get('models')}@{node.get('up_since')}"
        for coord in snapshot.get("coordinators") or ():
            found[str(coord.get("id"))] = f"{coord.get('model')}@{coord.get('started_at')}"
    return found
