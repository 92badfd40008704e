"""The core's own hook implementations: fallbacks that run when no plugin answers."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

from sollol.config import CORE_SETTINGS, Config, Setting
from sollol.hookspecs import hookimpl
from sollol.models import Backend, HealthReport, ResolvedModel

GGUF_MAGIC = b"GGUF"


@hookimpl
def sollol_register_settings(register: Callable[[Setting], None]) -> None:
    for setting in CORE_SETTINGS:
        register(setting)


@hookimpl(trylast=True)
def sollol_check_health(backend: Backend, timeout: float) -> HealthReport:
    """Fallback for kinds no plugin probes: can we open a TCP connection at all?"""
    start = time.perf_counter()
    try:
        with socket.create_connection((backend.host, backend.port), timeout=timeout):
            pass
    except OSError as exc:
        return HealthReport(backend.id, healthy=False, detail=f"TCP connect failed: {exc}")
    latency = time.perf_counter() - start
    return HealthReport(backend.id, healthy=True, latency_s=latency,
                        detail=f"TCP connect only (no probe for kind {backend.kind!r})")


@hookimpl(trylast=True)
def sollol_resolve_gguf(model: str, config: Config) -> ResolvedModel | None:
    """Fallback: `model` is a path to a GGUF file."""
    path = Path(model).expanduser()
    try:
        if not path.is_file():
            return None
        with path.open("rb") as handle:
            if handle.read(4) != GGUF_MAGIC:
                return None
    except OSError:
        return None
    return ResolvedModel(name=model, path=path.resolve(), size=path.stat().st_size, source="path")
