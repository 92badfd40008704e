"""The gateway's window on itself: `/metrics`, `/sollol/overview`, the live event stream and the
dashboard's files (all served from the package: clusters often have no internet)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import logging
import time
from importlib import resources
from typing import TYPE_CHECKING, Any

import attrs

from sollol.gateway.asgi import Receive, Scope, Send, send_body, send_json
from sollol.observe import BackendMetrics, Recorder
from sollol.observe import backend_metrics as scraping
from sollol.observe.exposition import CONTENT_TYPE, make_registry, render
from sollol.observe.overview import overview, recent_requests
from sollol.observe.recorder import request_row

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from sollol.core.runtime import ClusterRuntime

log = logging.getLogger("sollol.gateway")
STREAM = "/sollol/stream"
OVERVIEW = "/sollol/overview"
METRICS = "/metrics"
DASHBOARD = "/dashboard"
TICK = 0.25
"""Seconds between pushes of new requests to a dashboard (they are batched)."""
ROWS_PER_TICK = 50
"""At most this many new requests per push (200 a second) reach a dashboard's table."""
OVERVIEW_EVERY = 1.0
HISTORY_EVERY = 10.0
_TYPES = {".html": b"text/html; charset=utf-8", ".js": b"text/javascript; charset=utf-8",
          ".css": b"text/css; charset=utf-8", ".svg": b"image/svg+xml"}
_FILES = {"/dashboard": "index.html", "/dashboard/": "index.html",
          "/dashboard/app.js": "app.js", "/dashboard/charts.js": "charts.js",
          "/dashboard/app.css": "app.css", "/dashboard/icon.svg": "icon.svg"}
PATHS = (METRICS, OVERVIEW, STREAM, *_FILES)
"""Every path the monitor serves (the gateway's route table lists them)."""
# The page runs only its own script and styles, talks only to this gateway, and cannot be framed.
_SECURITY = [(b"content-security-policy", b"default-src 'none'; script-src 'self'; "
              b"style-src 'self'; img-src 'self' data:; connect-src 'self'; "
              b"frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
             (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]


@attrs.frozen
class Asset:
    """One dashboard file, read once, with its gzip form and an ETag."""

    body: bytes
    gzipped: bytes
    content_type: bytes
    etag: bytes

    @classmethod
    def load(cls, name: str) -> Asset:
        body = resources.files("sollol.gateway").joinpath("static", name).read_bytes()
        etag = b'"' + hashlib.sha256(body).hexdigest()[:16].encode() + b'"'
        suffix = name[name.rfind("."):]
        return cls(body, gzip.compress(body, 9, mtime=0), _TYPES[suffix], etag)


def dashboard_paths() -> dict[str, str]:
    """URL path -> file name of every dashboard asset (for tests and the page-weight bench)."""
    return dict(_FILES)


@attrs.define(eq=False)
class Monitor:
    """Metrics recorder, backend scraper and dashboard for one gateway."""

    cluster: ClusterRuntime
    running: Any  # Callable[[], int]: requests the gateway is serving now
    recorder: Recorder | None = None
    registry: CollectorRegistry | None = None
    scraper: BackendMetrics | None = None
    started_at: float = attrs.field(factory=time.time)
    closing: asyncio.Event = attrs.field(factory=asyncio.Event)
    streams: int = 0
    """Event streams open now (at most `max_event_streams`)."""
    _assets: dict[str, Asset] = attrs.field(factory=dict)
    _loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Register the recorder on the cluster's hook and start scraping backends."""
        self._loop = asyncio.get_running_loop()
        # read the page's files now: a broken install fails at start, not on the first visit
        self._assets = {name: Asset.load(name) for name in set(_FILES.values())}
        config = self.cluster.config
        if config["metrics_enabled"]:
            self.recorder = Recorder(max_models=int(config["metrics_max_models"]))
            self.cluster.pm.register(self.recorder, name=f"sollol-metrics-{id(self.recorder)}")
            self.registry = make_registry(self.recorder, self.cluster, self.running)
        interval = float(config["backend_metrics_interval"])
        if interval > 0:
            self.scraper = BackendMetrics(interval=interval,
                                          timeout=float(config["connect_timeout"]))
            self.scraper.start(lambda: scraping.targets(self.cluster),
                               lambda: scraping.credentials(self.cluster),
                               lambda: scraping.loads(self.cluster),
                               lambda: scraping.said_none(self.cluster))

    async def stop(self) -> None:
        self.closing.set()
        if self.scraper is not None:
            await self.scraper.stop()
        if self.recorder is not None and self.cluster.pm.is_registered(self.recorder):
            self.cluster.pm.unregister(self.recorder)

    def begin_shutdown(self) -> None:
        """End every live stream (callable from any thread): the server is about to stop, and
        an open stream would otherwise hold its shutdown for the whole grace period."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(self.closing.set)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """GET/HEAD of one of `PATHS` (the caller checked the method)."""
        path, head = scope["path"], scope["method"] == "HEAD"
        if path == METRICS:
            if self.registry is None:
                body = b'{"error": "metrics are off (metrics_enabled = false)"}'
                await send_body(send, 404, body, head=head)
                return
            await send_body(send, 200, render(self.registry), CONTENT_TYPE.encode(), head=head)
        elif path == OVERVIEW:
            await send_json(send, 200, {**self.overview(),
                                        "history": self.history(),
                                        "recent": recent_requests(self.cluster)}, head=head)
        elif path == STREAM:
            await self.stream(receive, send, head)
        else:
            await self._asset(scope, send, _FILES[path], head)

    def overview(self) -> dict[str, Any]:
        return overview(self.cluster, self.recorder, self.scraper, started_at=self.started_at,
                        running=self.running())

    def history(self) -> dict[str, Any] | None:
        return self.recorder.history.series() if self.recorder else None

    async def _asset(self, scope: Scope, send: Send, name: str, head: bool) -> None:
        asset = self._assets[name]
        headers = dict(scope["headers"])
        common = [(b"etag", asset.etag), (b"cache-control", b"no-cache"), *_SECURITY]
        if headers.get(b"if-none-match") == asset.etag:
            await send({"type": "http.response.start", "status": 304, "headers": common})
            await send({"type": "http.response.body", "body": b""})
            return
        body, extra = asset.body, [(b"vary", b"accept-encoding")]
        if b"gzip" in headers.get(b"accept-encoding", b""):
            body, extra = asset.gzipped, [*extra, (b"content-encoding", b"gzip")]
        await send_body(send, 200, body, asset.content_type, [*common, *extra], head=head)

    async def stream(self, receive: Receive, send: Send, head: bool = False) -> None:
        """Server-sent events: `overview` every second, `history` every ten, `requests` as they
        finish. The browser reconnects by itself after a cut (`retry:`). Each open stream holds
        a connection for as long as its page is open: past `max_event_streams` a new one gets
        503, so streams never take the slots that other clients need."""
        limit = int(self.cluster.config["max_event_streams"])
        if self.streams >= limit and not head:
            await send_json(send, 503, {"error": f"{limit} dashboard event streams are open "
                                                 "(max_event_streams); retry shortly"},
                            headers=[(b"retry-after", b"5")])
            return
        self.streams += 1
        try:
            await self._stream(receive, send, head)
        finally:
            self.streams -= 1

    async def _stream(self, receive: Receive, send: Send, head: bool) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]})
        if head:
            await send({"type": "http.response.body", "body": b""})
            return
        events = self.cluster.events
        gone = asyncio.Event()
        watcher = asyncio.create_task(_watch_disconnect(receive, gone))
        waiters = [asyncio.create_task(gone.wait()), asyncio.create_task(self.closing.wait())]
        try:
            seen = events.appended
            rows = recent_requests(self.cluster)
            await _push(send, b"retry: 2000\n\n" + _event("overview", self.overview())
                        + _event("history", self.history()) + _event("requests", rows))
            loop = asyncio.get_running_loop()
            next_overview = loop.time() + OVERVIEW_EVERY
            next_history = loop.time() + HISTORY_EVERY
            while not (gone.is_set() or self.closing.is_set()):
                await asyncio.wait(waiters, timeout=TICK)
                out = b""
                # the page shows the newest rows: under heavy traffic, skip the rest rather
                # than convert thousands of events a second (the totals still count them all)
                fresh = [request_row(event) for event in events.since(seen, ROWS_PER_TICK)]
                seen = events.appended
                if fresh:
                    out += _event("requests", fresh)
                now = loop.time()
                if now >= next_overview:
                    out += _event("overview", self.overview())
                    next_overview = now + OVERVIEW_EVERY
                if now >= next_history:
                    out += _event("history", self.history())
                    next_history = now + HISTORY_EVERY
                if out and not gone.is_set():
                    await _push(send, out)
            if not gone.is_set():
                await send({"type": "http.response.body", "body": b""})
        except OSError:
            log.debug("dashboard stream ended: the client went away")
        finally:
            for task in (watcher, *waiters):
                task.cancel()


async def _watch_disconnect(receive: Receive, gone: asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()


async def _push(send: Send, data: bytes) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": True})


def _event(name: str, data: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + json.dumps(
        data, default=str, separators=(",", ":")).encode() + b"\n\n"
