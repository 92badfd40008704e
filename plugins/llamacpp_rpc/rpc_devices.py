"""Which devices `sollol rpc serve` serves, and how the gateway learns their names.

llama.cpp's RPC protocol (7.0.0) reports each device's memory but not its name, so the name of an
rpc-server's device (`Vulkan0`, `CUDA0`, `CPU`) is known only where it runs. `sollol rpc serve`
writes what it serves into `<rpc_state_dir>/rpc-servers/<port>.json`; a gateway on the same
machine (same state dir) reads it and shows devices by name. For an rpc-server on another machine
the gateway shows `device N` and its memory.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sollol.errors import SollolError
from sollol.llamacpp import Device
from sollol.models import split_host_port

from . import procs

WILDCARDS = ("0.0.0.0", "::", "")


def choose(requested: str | None, available: Sequence[Device]) -> list[Device]:
    """The devices to serve: those named (comma-separated), else every GPU, else the CPU."""
    if requested:
        names = [n.strip() for n in requested.split(",") if n.strip()]
        by_name = {d.name: d for d in available}
        missing = [n for n in names if n not in by_name]
        if missing or not names:
            have = ", ".join(d.name for d in available) or "none"
            msg = (f"unknown device {', '.join(missing) or repr(requested)}: this "
                   f"ggml-rpc-server has {have}")
            raise SollolError(msg)
        return [by_name[n] for n in names]
    gpus = [d for d in available if d.is_gpu]
    return gpus or [d for d in available if not d.is_gpu][:1]


def gpu_warning(serving: Sequence[Device], visible: Sequence[Any], backend: str) -> str | None:
    """A warning when the machine shows a GPU but the served devices are all CPU."""
    if any(d.is_gpu for d in serving) or not visible:
        return None
    gpu = visible[0]
    return (f"this machine shows a {gpu.backend} GPU ({gpu.gpu}) but this ggml-rpc-server "
            f"(backend {backend}) serves only {', '.join(d.name for d in serving) or 'the CPU'}: "
            f"run `sollol llamacpp install --backend {gpu.backend}` to serve on the GPU")


def record(folder: Path, host: str, port: int, devices: Sequence[Device]) -> Path:
    """Say which devices the rpc-server on `port` serves, for a gateway on this machine."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{port}.json"
    data = {"host": host, "port": port, "pid": os.getpid(),
            "devices": [d.as_dict() for d in devices]}
    path.write_text(json.dumps(data, indent=2))
    return path


def forget(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def names(folder: Path, address: str) -> tuple[str, ...]:
    """The device names recorded for the rpc-server at `address`; () when none is known."""
    try:
        host, port = split_host_port(address)
        data = json.loads((folder / f"{port}.json").read_text())
    except (OSError, ValueError):
        return ()
    if not isinstance(data, dict) or not procs.alive(data.get("pid")):
        return ()
    bound = str(data.get("host", ""))
    if bound != host and bound not in WILDCARDS and not (_loopback(bound) and _loopback(host)):
        return ()
    return tuple(str(d.get("name")) for d in data.get("devices", []) if isinstance(d, dict))


def annotate(snapshot: dict[str, Any]) -> dict[str, Any]:
    """Name the devices of each coordinator's shares from its rpc-servers' device names."""
    known = {b["address"]: b.get("device_names") or [] for b in snapshot.get("backends", [])}
    for coordinator in snapshot.get("coordinators", []):
        for share in (coordinator.get("layers") or {}).get("backends", []):
            share["devices"] = known.get(share["address"], [])
    return snapshot


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
    return True
