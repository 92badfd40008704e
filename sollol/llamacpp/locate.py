"""Find the llama.cpp binaries: config, `SOLLOL_LLAMA_CPP_DIR`, `PATH`, then the build cache."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import attrs

from sollol.config import CORE_SETTINGS, Config, load_config
from sollol.errors import BinaryNotFound
from sollol.llamacpp.layout import INSTALL_COMMAND, MARKER, RPC_NAMES, SERVER_NAME, cache_root
from sollol.llamacpp.spec import BuildSpec

__all__ = ["ENV_VAR", "INSTALL_COMMAND", "MARKER", "RPC_NAMES", "SERVER_NAME", "Binaries",
           "cache_root", "find_binaries", "find_cached", "find_gpu_rpc_server",
           "for_serving"]

ENV_VAR = "SOLLOL_LLAMA_CPP_DIR"


@attrs.frozen
class Binaries:
    """The two llama.cpp programs SOLLOL runs, and where they were found."""

    llama_server: Path
    rpc_server: Path
    source: str
    """"config" (with the file), "SOLLOL_LLAMA_CPP_DIR", "PATH" or "cache"."""
    backend: str = "cpu"
    """The rpc-server's GPU backend as built by SOLLOL; "unknown" for binaries found elsewhere."""


def find_binaries(
    config: Config | None = None, *, env: Mapping[str, str] | None = None,
    cache: Path | None = None, preferred_key: str | None = None,
) -> Binaries:
    """The binaries to use, by the lookup order; raise BinaryNotFound naming the install command.

    A folder named by the config or the env var must hold both programs: an explicit choice that
    is wrong is an error, not a reason to quietly use something else.
    """
    env = os.environ if env is None else env
    if config is None:
        only = [s for s in CORE_SETTINGS if s.name == "llama_cpp_dir"]
        config = load_config(only, env=env, ignore_unknown=True)
    folder = config.get("llama_cpp_dir")
    if folder:
        source = config.sources.get("llama_cpp_dir", "config")
        label = ENV_VAR if source == ENV_VAR else f"config ({source})"
        return _in_folder(Path(folder).expanduser(), label, explicit=True)
    if env.get(ENV_VAR):  # a caller's config that predates the env var still honours it
        return _in_folder(Path(env[ENV_VAR]).expanduser(), ENV_VAR, explicit=True)
    found = _on_path(env.get("PATH", os.defpath))
    if found is not None:
        return found
    if preferred_key is None:
        preferred_key = BuildSpec().key
    found = find_cached(cache or cache_root(), preferred_key)
    if found is not None:
        return found
    msg = (f"{SERVER_NAME} and {RPC_NAMES[0]} were not found (looked at config key llama_cpp_dir, "
           f"{ENV_VAR}, PATH and the cache {cache or cache_root()}); "
           f"run `{INSTALL_COMMAND}` to build them")
    raise BinaryNotFound(msg)


def find_cached(root: Path, preferred_key: str | None = None) -> Binaries | None:
    """A finished cache entry: the preferred key if present, else the newest complete one."""
    entries = [root / preferred_key] if preferred_key else []
    if root.is_dir():
        others = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        entries += sorted(others, key=lambda p: p.stat().st_mtime, reverse=True)
    for entry in entries:
        if (entry / MARKER).is_file():
            found = _in_folder(entry / "bin", "cache", explicit=False)
            if found is not None:
                return attrs.evolve(found, backend=_marker_backend(entry))
    return None


def find_gpu_rpc_server(root: Path | None = None) -> tuple[str, Path] | None:
    """(backend, path) of a GPU rpc-server in the build cache, the newest first; None if none.

    `sollol rpc serve` prefers it to the CPU one: a worker whose owner built a GPU backend
    means to serve on the GPU.
    """
    root = root or cache_root()
    if not root.is_dir():
        return None
    entries = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    for entry in sorted(entries, key=lambda p: p.stat().st_mtime, reverse=True):
        backend = _marker_backend(entry)
        rpc = _executable(entry / "bin" / RPC_NAMES[0])
        if backend not in ("cpu", "unknown") and rpc:
            return backend, rpc
    return None


def for_serving(found: Binaries, root: Path | None = None) -> Binaries:
    """The binaries `sollol rpc serve` runs: a GPU build's rpc-server from the cache when there
    is one and the lookup itself came from the cache (a configured folder or PATH is honoured)."""
    gpu = find_gpu_rpc_server(root) if found.source == "cache" else None
    if gpu is None:
        return found
    backend, rpc = gpu
    return attrs.evolve(found, rpc_server=rpc, backend=backend)


def _marker_backend(entry: Path) -> str:
    try:
        info = json.loads((entry / MARKER).read_text())
    except (OSError, ValueError):
        return "unknown"
    return str(info.get("backend", "cpu")) if isinstance(info, dict) else "unknown"


def _in_folder(folder: Path, source: str, *, explicit: bool) -> Binaries | None:
    server = _executable(folder / SERVER_NAME)
    rpc = next((p for p in (_executable(folder / n) for n in RPC_NAMES) if p), None)
    if server and rpc:
        return Binaries(llama_server=server, rpc_server=rpc, source=source, backend="unknown")
    if not explicit:
        return None
    missing = " and ".join(n for n, p in ((SERVER_NAME, server), (RPC_NAMES[0], rpc)) if not p)
    msg = (f"{missing} not found in {folder} (named by {source}); fix that folder or unset it "
           f"and run `{INSTALL_COMMAND}`")
    raise BinaryNotFound(msg)


def _on_path(search_path: str) -> Binaries | None:
    server = shutil.which(SERVER_NAME, path=search_path)
    rpc = next((p for p in (shutil.which(n, path=search_path) for n in RPC_NAMES) if p), None)
    if server and rpc:
        return Binaries(llama_server=Path(server), rpc_server=Path(rpc), source="PATH",
                        backend="unknown")
    return None


def _executable(path: Path) -> Path | None:
    return path if path.is_file() and os.access(path, os.X_OK) else None
