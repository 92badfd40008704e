"""Builders the policy tests share: backends, routes and models with chosen figures (no tests)."""

from __future__ import annotations

from collections.abc import Iterable

from sollol.core.router import POOL, SHARDING
from sollol.models import Backend, BackendState, ModelInfo, RouteState

GiB = 2**30
B = 10**9


def node(
    name: str, *, models: Iterable[str] = ("m:latest",), loaded: Iterable[str] = (),
    free: float | None = None, total: float | None = None, healthy: bool = True, port: int = 11434,
) -> BackendState:
    """A pool node; `free` and `total` in GiB."""
    backend = Backend(id=name, kind="ollama", address=f"127.0.0.1:{port}")
    return BackendState(backend, healthy=healthy, models=models, loaded=loaded,
                        memory_free=_bytes(free), memory_total=_bytes(total),
                        detail="" if healthy else "connection refused")


def rpc(
    name: str, free: float | None, *, healthy: bool = True, loaded: Iterable[str] = (),
    port: int = 50052,
) -> BackendState:
    """An rpc-server reporting `free` GiB."""
    backend = Backend(id=name, kind="rpc", address=f"127.0.0.1:{port}")
    return BackendState(backend, healthy=healthy, memory_free=_bytes(free),
                        memory_total=_bytes(free), loaded=loaded)


def routes(
    pool: Iterable[BackendState] | None = (), sharding: Iterable[BackendState] | None = (),
) -> dict[str, RouteState]:
    """Both routes (None leaves a route out, as if its plugin were disabled)."""
    found = {}
    if pool is not None:
        found[POOL] = RouteState(POOL, tuple(pool))
    if sharding is not None:
        found[SHARDING] = RouteState(SHARDING, tuple(sharding))
    return found


def model(
    name: str = "m:latest", *, params: float | None = None, size: float | None = None,
    kv: int | None = None, layers: int | None = None, width: int | None = None,
    source: str = "test",
) -> ModelInfo:
    """A model; `params` in billions, `size` (file size) in GiB, `kv` bytes per token."""
    return ModelInfo(name=name, parameter_count=None if params is None else round(params * B),
                     file_size=_bytes(size), kv_bytes_per_token=kv, layer_count=layers,
                     embedding_length=width, source=source)


def _bytes(gib: float | None) -> int | None:
    return None if gib is None else round(gib * GiB)
