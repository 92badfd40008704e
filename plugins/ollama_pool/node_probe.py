"""Health probes for pool nodes: Ollama's API, or an OpenAI-compatible server's.

Ollama: `/api/version` (alive), `/api/tags` (models on disk), `/api/ps` (loaded models, VRAM).
OpenAI-compatible: `/health` (llama-server and vLLM; 503 while loading), `/v1/models`, and
llama-server's `/slots` (its parallel slots) when it is enabled.
Runs in a worker thread (sync httpx) and never raises for network trouble: it reports it.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import httpx

from sollol.models import Backend, HealthReport

from . import node_capabilities
from .node_discovery import OLLAMA, OPENAI, base_url


class _NotThisApi(Exception):
    """The server answered, but not in this dialect (e.g. 404 on /api/version)."""


def check(backend: Backend, timeout: float) -> HealthReport:
    """Probe one node in its dialect (trying both when its address asked for detection)."""
    url = base_url(backend)
    detect = backend.labels.get("detect") == "1"
    order = [OLLAMA, OPENAI] if backend.kind == OLLAMA else [OPENAI]
    if not detect:
        order = order[:1]
    started = time.perf_counter()
    try:
        with httpx.Client(base_url=url, timeout=timeout, trust_env=False,
                          headers=backend.auth_headers()) as client:
            for api in order:
                try:
                    return (_ollama if api == OLLAMA else _openai)(client, backend, started)
                except _NotThisApi as exc:
                    last = str(exc)
            return HealthReport(backend.id, healthy=False, detail=f"not a known API: {last}")
    except httpx.TimeoutException:
        return HealthReport(backend.id, healthy=False, detail=f"probe timed out after {timeout}s")
    except httpx.HTTPError as exc:
        return HealthReport(backend.id, healthy=False, detail=_describe(exc))
    except ValueError as exc:  # a body that is not the JSON the API documents
        return HealthReport(backend.id, healthy=False, detail=f"bad reply: {exc}")


def _describe(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return f"connection failed: {exc}" if str(exc) else "connection failed"
    return f"{type(exc).__name__}: {exc}"


def _get(client: httpx.Client, path: str) -> httpx.Response:
    return client.get(path, headers={"Accept": "application/json"})


def _ollama(client: httpx.Client, backend: Backend, started: float) -> HealthReport:
    version = _get(client, "/api/version")
    latency = time.perf_counter() - started
    if version.status_code == 404:
        raise _NotThisApi("GET /api/version: HTTP 404")
    if version.status_code != 200:
        return HealthReport(backend.id, healthy=False, latency_s=latency,
                            detail=f"GET /api/version: HTTP {version.status_code}")
    tags, ps = _get(client, "/api/tags"), _get(client, "/api/ps")
    for path, reply in (("/api/tags", tags), ("/api/ps", ps)):
        if reply.status_code != 200:
            return HealthReport(backend.id, healthy=False, latency_s=latency,
                                detail=f"GET {path}: HTTP {reply.status_code}")
    tag_entries = _entries(tags.json())
    ps_entries = _entries(ps.json())
    vram = sum(int(e.get("size_vram") or 0) for e in ps_entries)
    extra: dict[str, Any] = {"api": OLLAMA, "tags": tag_entries, "ps": ps_entries,
                             "vram_used": vram, "server": "ollama"}
    # what a node can do is learned as it goes: a failed look is not a sick node
    with contextlib.suppress(httpx.HTTPError):
        extra["capabilities"] = node_capabilities.ollama_models(client, backend.id, tag_entries)
    return HealthReport(
        backend.id, healthy=True, latency_s=latency, detail="ok",
        version=str(version.json().get("version", "")),
        models=tuple(_name(e) for e in tag_entries),
        loaded_models=tuple(_name(e) for e in ps_entries),
        extra=extra,
    )


def _openai(client: httpx.Client, backend: Backend, started: float) -> HealthReport:
    health = _get(client, "/health")
    latency = time.perf_counter() - started
    if health.status_code == 503:
        return HealthReport(backend.id, healthy=False, latency_s=latency,
                            detail="GET /health: 503 (loading the model)")
    if health.status_code not in (200, 404):
        return HealthReport(backend.id, healthy=False, latency_s=latency,
                            detail=f"GET /health: HTTP {health.status_code}")
    models = _get(client, "/v1/models")
    if models.status_code == 404:
        raise _NotThisApi("GET /v1/models: HTTP 404")
    if models.status_code != 200:
        return HealthReport(backend.id, healthy=False, latency_s=latency,
                            detail=f"GET /v1/models: HTTP {models.status_code}")
    data = models.json().get("data")
    if not isinstance(data, list):
        raise ValueError("/v1/models has no data list")
    ids = tuple(str(m["id"]) for m in data if isinstance(m, dict) and "id" in m)
    meta = {str(m["id"]): m.get("meta") or {} for m in data if isinstance(m, dict) and "id" in m}
    extra: dict[str, Any] = {"api": OPENAI, "meta": meta}
    slots = _get(client, "/slots")
    if slots.status_code == 200 and isinstance(slots.json(), list):
        busy = [s for s in slots.json() if isinstance(s, dict) and s.get("is_processing")]
        extra.update(slots=len(slots.json()), slots_busy=len(busy))
    try:
        extra["server"], found, extra["details"] = node_capabilities.openai_server(client)
        if found is not None:
            extra["capabilities"] = {"": found}
    except httpx.HTTPError:
        pass
    return HealthReport(backend.id, healthy=True, latency_s=latency, detail="ok",
                        models=ids, loaded_models=ids, extra=extra)


def _entries(body: Any) -> list[dict[str, Any]]:
    models = body.get("models") if isinstance(body, dict) else None
    if not isinstance(models, list):
        raise ValueError("expected {\"models\": [...]}")
    return [m for m in models if isinstance(m, dict) and _name(m)]


def _name(entry: dict[str, Any]) -> str:
    return str(entry.get("name") or entry.get("model") or "")
