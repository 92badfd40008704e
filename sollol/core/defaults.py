"""The core's own hook implementations: fallbacks that run when no plugin answers."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
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
    """Fallback: a GGUF file in one of the `gguf_dirs` folders, named by its file name (with or
    without `.gguf`) or by a path inside the folder. Nothing outside them resolves: a client
    must not be able to name an arbitrary file on the gateway machine."""
    folders = config.get("gguf_dirs") or []
    path = gguf_in_folders(model, folders)
    return None if path is None else gguf_file(path, model)


def gguf_in_folders(model: str, folders: Sequence[str]) -> Path | None:
    """The file `model` names inside one of `folders` (symlinks resolved, then checked to stay
    inside), or None."""
    name = model.strip()
    if not name or "\x00" in name:
        return None
    for folder in folders:
        try:
            root = Path(folder).expanduser().resolve(strict=True)
        except OSError:
            continue
        if "/" in name:  # a path: only one that lies inside the folder
            candidates = [Path(name).expanduser()]
        else:  # a file name (canonical names carry the default tag: "tiny:latest" is "tiny")
            bare = name.removesuffix(":latest")
            if bare in ("", ".", "..") or ":" in bare:
                continue
            candidates = [root / bare, root / f"{bare}.gguf"]
        for candidate in candidates:
            try:
                real = candidate.resolve(strict=True)
            except (OSError, RuntimeError):
                continue
            if real.is_relative_to(root) and real.is_file():
                return real
    return None


def gguf_file(path: Path, name: str, source: str = "path") -> ResolvedModel | None:
    """`path` as a resolved model when it is a readable GGUF file, else None."""
    try:
        with path.open("rb") as handle:
            if handle.read(4) != GGUF_MAGIC:
                return None
        size = path.stat().st_size
    except OSError:
        return None
    return ResolvedModel(name=name, path=path.resolve(), size=size, source=source)
