"""The dashboard's files and event stream over plain HTTP (the browser test drives the page)."""

from __future__ import annotations

import gzip
import json
import re
import threading
import time
from pathlib import Path

import httpx
import pytest

from sollol.gateway.monitor import dashboard_paths
from sollol.testing.static_route import StaticRoute, Upstream

MODEL = "llama3.2:1b"
TYPES = {"html": "text/html", "js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}
STATIC = Path(__file__).resolve().parents[2] / "sollol" / "gateway" / "static"


@pytest.fixture
def gw(emulator, gateway):
    node = emulator()
    route = StaticRoute("pool", [Upstream("node-a", node.url, "ollama", (MODEL,))])
    return gateway(routes=[route], task_distribution_enabled=True)


def test_every_file_is_served_by_the_gateway_with_its_type_and_headers(gw) -> None:
    for path, name in dashboard_paths().items():
        reply = httpx.get(gw.url + path, timeout=10, headers={"accept-encoding": "identity"})
        assert reply.status_code == 200, path
        assert reply.content == (STATIC / name).read_bytes()
        assert "content-security-policy" in reply.headers
        assert reply.headers["x-content-type-options"] == "nosniff"
        kind = reply.headers["content-type"].split(";")[0]
        assert kind == TYPES[name.rsplit(".")[-1]]
        zipped = httpx.get(gw.url + path, timeout=10, headers={"accept-encoding": "gzip"})
        assert zipped.headers["content-encoding"] == "gzip"
        assert zipped.content == (STATIC / name).read_bytes()  # httpx decoded it
        again = httpx.get(gw.url + path, timeout=10,
                          headers={"if-none-match": reply.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
        head = httpx.head(gw.url + path, timeout=10)
        assert head.status_code == 200 and head.content == b""
    assert httpx.post(gw.url + "/dashboard", timeout=10).status_code == 405


def test_the_page_loads_nothing_from_elsewhere() -> None:
    """No CDN, fonts or scripts from the internet: users' clusters often have no internet."""
    for file in STATIC.iterdir():
        text = file.read_text()
        urls = re.findall(r"""(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}[^\s"')]*""", text, re.I)
        urls = [u for u in urls if not u.startswith("http://www.w3.org/")]  # SVG's namespace
        assert not urls, f"{file.name} refers to {urls}"
    html = (STATIC / "index.html").read_text()
    for ref in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert ref in dashboard_paths(), f"index.html loads {ref}, which the gateway does not serve"
    assert "<script>" not in html and "style=" not in html  # nothing inline: the CSP forbids it


def test_page_weight_stays_small() -> None:
    total = sum(len(gzip.compress(f.read_bytes(), 9)) for f in STATIC.iterdir())
    assert total < 40_000, f"the dashboard is {total} bytes gzipped"


def read_events(url: str, until, timeout: float = 60.0) -> list[tuple[str, object]]:
    """Server-sent events from /sollol/stream until `until(events)` is true."""
    events: list[tuple[str, object]] = []
    buffer = ""
    with httpx.stream("GET", url + "/sollol/stream", timeout=timeout) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        for text in reply.iter_text():
            buffer += text
            while "\n\n" in buffer:
                block, buffer = buffer.split("\n\n", 1)
                fields = dict(line.split(": ", 1) for line in block.splitlines()
                              if ": " in line)
                if "event" in fields:
                    events.append((fields["event"], json.loads(fields["data"])))
            if until(events):
                return events
    return events


def test_the_stream_starts_with_the_picture_then_sends_requests_as_they_finish(gw) -> None:
    assert httpx.post(gw.url + "/api/generate", timeout=30, json={
        "model": MODEL, "prompt": "before", "stream": False}).status_code == 200
    sent = threading.Event()

    def later() -> None:
        time.sleep(0.5)  # (a client of the gateway, sending while the stream is open)
        httpx.post(gw.url + "/api/generate", timeout=30,
                   json={"model": "not-there", "prompt": "after"})
        sent.set()

    sender = threading.Thread(target=later)
    sender.start()
    events = read_events(gw.url, lambda ev: any(
        name == "requests" and any(r["model"] == "not-there" for r in data)
        for name, data in ev) and sum(n == "overview" for n, _ in ev) >= 2)
    sender.join()
    names = [name for name, _ in events]
    assert names[:3] == ["overview", "history", "requests"]
    first_rows = events[2][1]
    assert [r["model"] for r in first_rows] == [MODEL]  # recent requests come first
    assert first_rows[0]["tokens_per_second"] > 0
    overview = events[0][1]
    assert overview["nodes"][0]["id"] == "node-a"
    assert overview["requests"]["requests"] == 1


def test_stopping_the_gateway_ends_open_streams_cleanly(emulator, gateway) -> None:
    """A dashboard's stream ends as soon as the gateway stops, with a proper end of the body:
    left to the grace period, uvicorn would cut it (and hold the shutdown until then)."""
    node = emulator()
    route = StaticRoute("pool", [Upstream("node-a", node.url, "ollama", (MODEL,))])
    gw = gateway(routes=[route], task_distribution_enabled=True)
    opened = threading.Event()
    outcome: list[object] = []

    def watch() -> None:
        try:
            with httpx.stream("GET", gw.url + "/sollol/stream", timeout=60) as reply:
                for _ in reply.iter_bytes():
                    opened.set()
            outcome.append("ended")
        except httpx.HTTPError as exc:  # a cut: the body never ended properly
            outcome.append(exc)

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert opened.wait(30)
    gw.stop()
    watcher.join(60)
    assert outcome == ["ended"]
