"""SOLLOL backend plugin `v2-backend`: OpenAI-compatible servers as pool nodes.

Hooks: a config key listing the servers, a backend kind, discovery and a health check. The
pool route balances requests over every backend whose kind speaks a dialect the gateway knows
("openai" or "ollama"), so that is all a new server kind needs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import httpx

from sollol.config import Config, Setting
from sollol.hookspecs import hookimpl
from sollol.models import Backend, BackendKind, HealthReport

KIND = "v2-backend"
NODES = "v2_backend_nodes"


@hookimpl
def sollol_register_settings(register: Callable[[Setting], None]) -> None:
    register(Setting(NODES, "list", [], "Addresses (host:port) of v2-backend servers."))


@hookimpl
def sollol_register_backend_kinds(register: Callable[[BackendKind], None]) -> None:
    register(BackendKind(KIND, api="openai", description="OpenAI-compatible servers of a new kind as SOLLOL pool nodes."))


@hookimpl
def sollol_discover_backends(config: Config) -> Iterable[Backend]:
    return [Backend(id=address, kind=KIND, address=address, labels={"scheme": "http"})
            for address in config[NODES]]


@hookimpl
def sollol_check_health(backend: Backend, timeout: float) -> HealthReport | None:
    if backend.kind != KIND:
        return None  # not ours: let the next plugin answer
    started = time.perf_counter()
    try:
        reply = httpx.get(f"http://{backend.address}/v1/models", timeout=timeout,
                          trust_env=False)
        reply.raise_for_status()
        models = tuple(str(m["id"]) for m in reply.json()["data"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        return HealthReport(backend.id, healthy=False, detail=f"GET /v1/models: {exc}")
    return HealthReport(backend.id, healthy=True, detail="ok", models=models,
                        latency_s=time.perf_counter() - started, extra={"api": "openai"})
