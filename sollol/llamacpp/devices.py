"""The devices a llama.cpp binary sees, as llama.cpp names them (`Vulkan0`, `CUDA0`, `CPU`).

`llama-server --list-devices` prints them. `ggml-rpc-server` has no such flag, but asked for a
device it does not have, it prints every device it has and exits: that list is the one it would
serve from, under the same environment (`GGML_VK_VISIBLE_DEVICES`, `CUDA_VISIBLE_DEVICES`, ...).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

import attrs

from sollol.errors import SollolError

MiB = 1024**2
_LINE = re.compile(r"^\s*([\w.-]+): (.*) \((\d+) MiB, (\d+) MiB free\)\s*$")
_NO_SUCH_DEVICE = "sollol-list-devices"
"""A device name no backend has: ggml-rpc-server answers it with its device list."""
CPU_KINDS = ("CPU", "BLAS", "RPC")
"""Device-name stems that are not GPUs (ggml's CPU device; accelerators on the CPU)."""


@attrs.frozen
class Device:
    """One llama.cpp device: its name, what the driver calls it, and its memory in bytes."""

    name: str
    description: str
    total: int
    free: int

    @property
    def is_gpu(self) -> bool:
        return self.name.rstrip("0123456789") not in CPU_KINDS

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "description": self.description, "total": self.total,
                "free": self.free, "gpu": self.is_gpu}

    def line(self) -> str:
        return (f"{self.name}: {self.description} ({self.total // MiB} MiB, "
                f"{self.free // MiB} MiB free)")


def parse(text: str) -> tuple[Device, ...]:
    """The `NAME: DESCRIPTION (T MiB, F MiB free)` lines of a device listing."""
    found = []
    for line in text.splitlines():
        if m := _LINE.match(line):
            found.append(Device(m.group(1), m.group(2), int(m.group(3)) * MiB,
                                int(m.group(4)) * MiB))
    return tuple(found)


def rpc_server_devices(binary: Path, env: Mapping[str, str] | None = None,
                       timeout: float = 60) -> tuple[Device, ...]:
    """Every device a ggml-rpc-server can serve from (CPU included)."""
    return _listing([str(binary), "-d", _NO_SUCH_DEVICE], env, timeout)


def llama_server_devices(binary: Path, env: Mapping[str, str] | None = None,
                         timeout: float = 60) -> tuple[Device, ...]:
    """The devices llama-server can offload to (`--list-devices`; its CPU is not listed)."""
    return _listing([str(binary), "--list-devices"], env, timeout)


def _listing(argv: list[str], env: Mapping[str, str] | None, timeout: float) -> tuple[Device, ...]:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                                timeout=timeout, stdin=subprocess.DEVNULL,
                                env=dict(os.environ if env is None else env))
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SollolError(f"cannot list the devices of {argv[0]}: {exc}") from None
    return parse(result.stdout + "\n" + result.stderr)


def unknown(names: list[str], devices: tuple[Device, ...]) -> list[str]:
    """The names in `names` that none of `devices` has."""
    have = {d.name for d in devices}
    return [n for n in names if n not in have]
