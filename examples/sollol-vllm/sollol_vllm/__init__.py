"""`vllm`: vLLM's OpenAI-compatible servers as SOLLOL pool nodes.

The pool balances over any backend kind that speaks the OpenAI dialect, so this plugin only has
to say where the servers are and how healthy they are, the vLLM way:

- `GET /health` answers 200 once the engine runs (anything else: not ready);
- `GET /v1/models` lists the served model (`id`) with its context length (`max_model_len`);
- `GET /version` gives the server's version;
- `GET /metrics` (Prometheus text) carries `vllm:num_requests_running` and
  `vllm:num_requests_waiting`; a server whose queue passes `vllm_max_waiting` is reported
  unhealthy for a while, so the pool sends new work elsewhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx

from sollol.config import Config, Setting
from sollol.hookspecs import hookimpl
from sollol.models import Backend, BackendKind, HealthReport, join_host_port, split_host_port

KIND = "vllm"
DEFAULT_PORT = 8000  # `vllm serve` listens here unless told otherwise


def _nonnegative(value: int) -> int:
    if value < 0:
        raise ValueError("0 or more (0: no limit)")
    return value


@hookimpl
def sollol_register_settings(register: Callable[[Setting], None]) -> None:
    register(Setting("vllm_nodes", "list", [],
                     "vLLM servers: host:port, http://host:port or https://host:port "
                     "(port 8000 when none is given)."))
    register(Setting("vllm_max_waiting", "int", 0,
                     "A vLLM server with more queued requests than this is reported unhealthy "
                     "until its queue drains (0: no limit).", check=_nonnegative))


@hookimpl
def sollol_register_backend_kinds(register: Callable[[BackendKind], None]) -> None:
    register(BackendKind(KIND, api="openai", description="a vLLM OpenAI-compatible server"))


@hookimpl
def sollol_discover_backends(config: Config) -> Iterable[Backend]:
    found = []
    for entry in config["vllm_nodes"]:
        scheme = "https" if entry.lower().startswith("https://") else "http"
        host, port = split_host_port(entry, default_port=DEFAULT_PORT)
        address = join_host_port(host, port)
        labels = {"scheme": scheme, "max_waiting": str(config["vllm_max_waiting"])}
        found.append(Backend(id=address, kind=KIND, address=address, labels=labels))
    return found


@hookimpl
def sollol_check_health(backend: Backend, timeout: float) -> HealthReport | None:
    if backend.kind != KIND:
        return None
    return probe(backend, timeout)


def probe(backend: Backend, timeout: float,
          transport: httpx.BaseTransport | None = None) -> HealthReport:
    """One health probe of one vLLM server (a transport can be given for tests)."""
    url = f"{backend.labels.get('scheme', 'http')}://{backend.address}"
    started = time.perf_counter()
    try:
        with httpx.Client(base_url=url, timeout=timeout, trust_env=False,
                          transport=transport) as client:
            return _probe(client, backend, started)
    except httpx.HTTPError as exc:
        return HealthReport(backend.id, healthy=False, detail=f"{type(exc).__name__}: {exc}")
    except (ValueError, KeyError, TypeError) as exc:  # a reply that is not vLLM's documented JSON
        return HealthReport(backend.id, healthy=False, detail=f"bad reply: {exc!r}"[:300])


def _probe(client: httpx.Client, backend: Backend, started: float) -> HealthReport:
    health = client.get("/health")
    latency = time.perf_counter() - started
    if health.status_code != 200:
        return HealthReport(backend.id, healthy=False, latency_s=latency,
                            detail=f"GET /health: HTTP {health.status_code} (engine not ready)")
    listing = client.get("/v1/models")
    if listing.status_code in (401, 403):
        return HealthReport(backend.id, healthy=False, latency_s=latency,
                            detail=f"GET /v1/models: HTTP {listing.status_code} (a server "
                                   "started with --api-key is not supported yet)")
    listing.raise_for_status()
    data = listing.json()["data"]
    models = tuple(str(m["id"]) for m in data)
    context = {str(m["id"]): m.get("max_model_len") for m in data}
    version = client.get("/version")
    load = _load(client.get("/metrics"))
    extra: dict[str, Any] = {"api": "openai", "meta": {m: {"n_ctx_train": c} for m, c in
                                                       context.items() if isinstance(c, int)}}
    detail = "ok"
    if load is not None:
        running, waiting = load
        extra.update(requests_running=running, requests_waiting=waiting)
        detail = f"ok: {running} running, {waiting} waiting"
        limit = int(backend.labels.get("max_waiting", "0"))
        if limit and waiting > limit:
            return HealthReport(backend.id, healthy=False, latency_s=latency, models=models,
                                detail=f"{waiting} requests waiting, over vllm_max_waiting "
                                       f"({limit})")
    return HealthReport(backend.id, healthy=True, latency_s=latency, models=models,
                        loaded_models=models,  # vLLM serves exactly the model it loaded
                        version=version.json().get("version") if version.status_code == 200
                        else None, detail=detail, extra=extra)


def _load(reply: httpx.Response) -> tuple[int, int] | None:
    """(running, waiting) requests from vLLM's Prometheus metrics, summed over its engines."""
    if reply.status_code != 200:
        return None
    running = waiting = 0.0
    seen = False
    for line in reply.text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
            value = float(line.rsplit(" ", 1)[1])
            seen = True
            if name.endswith("running"):
                running += value
            else:
                waiting += value
    return (int(running), int(waiting)) if seen else None
