"""What a joining machine reports: its devices with free memory, and its local pool nodes.

Devices (`{"name", "backend", "memory_total", "memory_free"}`, bytes), best source first:
nvidia-smi and rocm-smi (live free memory of every GPU), else the rpc-server binary's own device
list (llama.cpp's view: Vulkan, Metal, ...; listed again at most every `LIST_EVERY` seconds, it
starts a process), and always the CPU from /proc/meminfo (MemAvailable).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import httpx

MiB = 1024**2
LIST_EVERY = 60.0
OLLAMA_PORT = 11434
LLAMA_SERVER_PORT = 8080
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


def _device(name: str, backend: str, total: int, free: int) -> dict[str, Any]:
    return {"name": name, "backend": backend, "memory_total": int(total),
            "memory_free": int(free)}


def _run(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10,
                              stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def nvidia_devices() -> list[dict[str, Any]]:
    """Every NVIDIA GPU as CUDA<i>, from nvidia-smi (MiB figures)."""
    if shutil.which("nvidia-smi") is None:
        return []
    out = _run(["nvidia-smi", "--query-gpu=index,memory.total,memory.free",
                "--format=csv,noheader,nounits"]) or ""
    found = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            found.append(_device(f"CUDA{parts[0]}", "cuda", int(parts[1]) * MiB,
                                 int(parts[2]) * MiB))
    return found


def rocm_devices() -> list[dict[str, Any]]:
    """Every AMD GPU as ROCm<i>, from `rocm-smi --showmeminfo vram --json` (bytes)."""
    if shutil.which("rocm-smi") is None:
        return []
    try:
        data = json.loads(_run(["rocm-smi", "--showmeminfo", "vram", "--json"]) or "{}")
    except ValueError:
        return []
    found = []
    for card, values in sorted(data.items()) if isinstance(data, dict) else ():
        index = re.sub(r"\D", "", card)
        total = values.get("VRAM Total Memory (B)") if isinstance(values, dict) else None
        used = values.get("VRAM Total Used Memory (B)") if isinstance(values, dict) else None
        if index and str(total).isdigit() and str(used).isdigit():
            found.append(_device(f"ROCm{index}", "rocm", int(total), int(total) - int(used)))
    return found


def cpu_device(meminfo: Path = Path("/proc/meminfo")) -> dict[str, Any] | None:
    """The CPU's memory: MemTotal and MemAvailable."""
    try:
        text = meminfo.read_text()
    except OSError:
        return None
    fields = dict(re.findall(r"^(\w+):\s+(\d+) kB", text, re.MULTILINE))
    if "MemTotal" not in fields:
        return None
    total = int(fields["MemTotal"]) * 1024
    return _device("CPU", "cpu", total, int(fields.get("MemAvailable", 0)) * 1024 or total)


@attrs.define
class DeviceReport:
    """Devices and free memory for each heartbeat; `listing` is the binary's device list."""

    listing: Callable[[], list[dict[str, Any]]] | None = None
    _listed: list[dict[str, Any]] = attrs.field(factory=list)
    _listed_at: float = -LIST_EVERY

    def devices(self) -> list[dict[str, Any]]:
        gpus = nvidia_devices() + rocm_devices()
        if not gpus and self.listing is not None:
            now = time.monotonic()
            if now - self._listed_at >= LIST_EVERY:
                self._listed_at = now
                self._listed = self.listing()
            gpus = self._listed
        cpu = cpu_device()
        return [*gpus, *([cpu] if cpu else [])]


def binary_listing(rpc_server: Path) -> Callable[[], list[dict[str, Any]]]:
    """The GPUs a ggml-rpc-server binary sees (llama.cpp's names and figures)."""
    from sollol.llamacpp import rpc_server_devices

    def listing() -> list[dict[str, Any]]:
        try:
            devices = rpc_server_devices(rpc_server, timeout=30)
        except Exception:  # a broken driver must not stop the heartbeats
            return []
        return [_device(d.name, d.name.rstrip("0123456789").lower(), d.total, d.free)
                for d in devices if d.is_gpu]

    return listing


# ------------------------------------------------------------------------------ pool nodes


@attrs.frozen
class PoolNode:
    """A pool node on this machine: `kind` ("ollama" or "openai") on 127.0.0.1:`port`."""

    kind: str
    port: int

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "port": self.port}


def probe_kind(port: int, timeout: float = 2.0) -> str | None:
    """"ollama" (answers /api/version), "openai" (a llama-server's /health or /v1/models) or
    None (nothing that answers like either)."""
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=timeout, trust_env=False) as client:
            reply = client.get(base + "/api/version")
            if reply.status_code == 200 and "version" in _json(reply):
                return "ollama"
            for path in ("/health", "/v1/models"):
                if client.get(base + path).status_code == 200:
                    return "openai"
    except httpx.HTTPError:
        return None
    return None


def _json(reply: httpx.Response) -> dict[str, Any]:
    try:
        data = reply.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def detect_pool_nodes() -> list[PoolNode]:
    """An Ollama on 127.0.0.1:11434 and a llama-server on 127.0.0.1:8080, when they answer."""
    found = []
    if probe_kind(OLLAMA_PORT) == "ollama":
        found.append(PoolNode("ollama", OLLAMA_PORT))
    if probe_kind(LLAMA_SERVER_PORT) == "openai":
        found.append(PoolNode("openai", LLAMA_SERVER_PORT))
    return found


def parse_pool_node(text: str) -> PoolNode:
    """`--pool-node URL` ("http://127.0.0.1:11434", "openai://127.0.0.1:8080", "127.0.0.1:8080");
    ValueError unless it is on this machine (the tunnel reaches loopback only)."""
    from sollol.models import split_host_port

    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "http", text
    rest = rest.split("/", 1)[0]
    try:
        host, port = split_host_port(rest)
    except ValueError:
        raise ValueError(f"--pool-node {text!r}: expected URL like http://127.0.0.1:11434") \
            from None
    if host not in LOOPBACK:
        raise ValueError(f"--pool-node {text!r}: a pool node must run on this machine and "
                         "listen on 127.0.0.1 (the tunnel carries it; nothing else can reach it)")
    if scheme in ("openai", "ollama"):
        return PoolNode(scheme, port)
    if scheme not in ("http", "https"):
        raise ValueError(f"--pool-node {text!r}: scheme must be http, ollama or openai")
    return PoolNode(probe_kind(port) or "ollama", port)
