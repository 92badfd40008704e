"""Load and health watching for fault tests: many concurrent requests in both dialects, each
classified (complete, or an error naming a node; never a silent truncation), and the pool's view
of each node over time (when it was ejected, when it came back).

    watch = HealthWatch(gateway_url).start()
    results = run_load(gateway_url, plan_load("kill", 40, model="m"), timeout=30)
    results, t0 = load_during(gateway_url, plan_load("cut", 8, model="m"), node.cut, delay=0.3)
    problems = check_load(results, expected="w0 w1 ...", nodes=["10.77.0.3:11434", ...])
    watch.stop(); watch.first_change("10.77.0.3:11434", after=t0)
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import httpx


@attrs.frozen
class LoadRequest:
    """One request of a load: a tag (put in the prompt), dialect, streamed or not."""

    tag: str
    api: str  # "ollama" or "openai"
    stream: bool
    model: str
    max_tokens: int | None = None


@attrs.define
class LoadResult:
    """What one client saw."""

    request: LoadRequest
    status: int = 0
    backend: str = ""
    text: str = ""
    complete: bool = False
    error: str | None = None
    seconds: float = 0.0
    chunks: int = 0


def plan_load(name: str, count: int, *, model: str, max_tokens: int | None = None,
              ) -> list[LoadRequest]:
    """`count` requests mixing both dialects, streamed and not."""
    return [LoadRequest(f"{name}-{i}", ("ollama", "openai")[i % 2], i % 4 < 2, model, max_tokens)
            for i in range(count)]


def _body(req: LoadRequest) -> tuple[str, dict[str, Any]]:
    messages = [{"role": "user", "content": f"request {req.tag}"}]
    if req.api == "ollama":
        body: dict[str, Any] = {"model": req.model, "messages": messages, "stream": req.stream}
        if req.max_tokens:
            body["options"] = {"num_predict": req.max_tokens, "temperature": 0}
        return "/api/chat", body
    body = {"model": req.model, "messages": messages, "stream": req.stream}
    if req.max_tokens:
        body.update(max_tokens=req.max_tokens, temperature=0)
    return "/v1/chat/completions", body


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message"))
    return str(error)


def _read_ollama(result: LoadResult, lines: Iterable[str]) -> None:
    for line in lines:
        if not line.strip():
            continue
        data = json.loads(line)
        if "error" in data:
            result.error = _error_text(data["error"])
            return
        result.chunks += 1
        result.text += (data.get("message") or {}).get("content") or ""
        if data.get("done"):
            result.complete = True


def _read_sse(result: LoadResult, events: Iterable[str]) -> None:
    for event in events:
        payload = event.strip().removeprefix("data:").strip()
        if not payload:
            continue
        if payload == "[DONE]":
            result.complete = True
            continue
        data = json.loads(payload)
        if "error" in data:
            result.error = _error_text(data["error"])
            return
        result.chunks += 1
        for choice in data.get("choices") or []:
            result.text += (choice.get("delta") or {}).get("content") or ""


async def _one(client: httpx.AsyncClient, url: str, req: LoadRequest) -> LoadResult:
    result = LoadResult(req)
    path, body = _body(req)
    started = time.monotonic()
    try:
        async with client.stream("POST", url + path, json=body) as reply:
            raw = (await reply.aread()).decode()
            result.status = reply.status_code
            result.backend = reply.headers.get("x-sollol-backend", "")
        if result.status != 200:
            result.error = _error_text(json.loads(raw).get("error"))
        elif req.stream and req.api == "ollama":
            _read_ollama(result, raw.splitlines())
        elif req.stream:
            _read_sse(result, raw.split("\n\n"))
        else:
            data = json.loads(raw)
            if req.api == "ollama":
                result.text = data["message"]["content"]
                result.complete = bool(data.get("done"))
            else:
                result.text = data["choices"][0]["message"]["content"]
                result.complete = data["choices"][0].get("finish_reason") is not None
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        result.error = f"client: {type(exc).__name__}: {exc}"
    result.seconds = time.monotonic() - started
    return result


def run_load(url: str, requests: Sequence[LoadRequest], *, timeout: float) -> list[LoadResult]:
    """Send every request at once; `timeout` is the client's own read limit per request."""
    async def main() -> list[LoadResult]:
        limits = httpx.Limits(max_connections=len(requests) + 4)
        async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False) as client:
            return list(await asyncio.gather(*(_one(client, url, r) for r in requests)))

    return asyncio.run(main())


def load_during(url: str, requests: Sequence[LoadRequest], inject: Callable[[], object], *,
                delay: float = 0.3, timeout: float = 60.0) -> tuple[list[LoadResult], float]:
    """Send `requests` at once, call `inject` (the fault) `delay` seconds in, wait for every
    reply; returns the results and when the fault was injected (`time.monotonic()`)."""
    out: list[LoadResult] = []
    runner = threading.Thread(target=lambda: out.extend(run_load(url, requests,
                                                                 timeout=timeout)))
    runner.start()
    time.sleep(delay)
    injected = time.monotonic()
    try:
        inject()
    finally:
        runner.join()
    return out, injected


def append_report(path: str | None, rows: Sequence[dict[str, Any]]) -> None:
    """Add rows to a JSON list in `path` (several test modules share one report file)."""
    if not path:
        return
    report = Path(path)
    earlier = json.loads(report.read_text()) if report.exists() else []
    report.write_text(json.dumps([*earlier, *rows], indent=1))


def check_load(results: Sequence[LoadResult], *, expected: str | None, nodes: Sequence[str],
               bound: float) -> list[str]:
    """Everything wrong with a load's results: a request that ended after `bound` seconds; an
    error that names no node; a reply that claims to be complete but is not the expected text;
    a cut reply that is not a prefix of it (a retry after the first byte would repeat it)."""
    problems = []
    for r in results:
        tag = r.request.tag
        if r.seconds > bound:
            problems.append(f"{tag}: took {r.seconds:.1f}s (> {bound:.1f}s)")
        if r.error is None:
            if not r.complete:
                problems.append(f"{tag}: ended without an error and without its end (silent "
                                f"truncation): {r.text!r}")
            elif expected is not None and r.text != expected:
                problems.append(f"{tag}: complete but wrong text {r.text!r}")
        else:
            if not any(node in r.error for node in nodes):
                problems.append(f"{tag}: error names no node: {r.error!r}")
            if r.complete:
                problems.append(f"{tag}: both complete and an error: {r.error!r}")
            if expected is not None and not expected.startswith(r.text):
                problems.append(f"{tag}: cut reply is not a prefix of the answer: {r.text!r}")
    return problems


@attrs.define(eq=False)
class HealthWatch:
    """Polls the gateway's `/sollol/nodes` and keeps each node's health changes with times."""

    url: str
    interval: float = 0.05
    changes: dict[str, list[tuple[float, str]]] = attrs.field(factory=dict)
    _stop: threading.Event = attrs.field(factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> HealthWatch:
        self._thread = threading.Thread(target=self._run, daemon=True, name="health-watch")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while not self._stop.is_set():
                try:
                    nodes = client.get(self.url + "/sollol/nodes").json()["nodes"]
                except (httpx.HTTPError, ValueError, KeyError):
                    nodes = []
                now = time.monotonic()
                for node in nodes:
                    seen = self.changes.setdefault(node["id"], [])
                    if not seen or seen[-1][1] != node["health"]:
                        seen.append((now, node["health"]))
                self._stop.wait(self.interval)

    def health(self, node: str) -> str | None:
        seen = self.changes.get(node)
        return seen[-1][1] if seen else None

    def first_change(self, node: str, *, after: float, to_healthy: bool) -> float | None:
        """Seconds from `after` until the node was first seen (un)healthy (0 when it already
        was at `after`), or None if it never was."""
        before = [h for when, h in self.changes.get(node, []) if when < after]
        if before and (before[-1] == "healthy") == to_healthy:
            return 0.0
        for when, health in self.changes.get(node, []):
            if when >= after and (health == "healthy") == to_healthy:
                return when - after
        return None
