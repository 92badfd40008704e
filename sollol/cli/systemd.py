"""Writing values into systemd unit files so that systemd reads back exactly what was meant.

systemd expands `%` specifiers in `ExecStart=` and `Environment=`, and `$VAR` in `ExecStart=`'s
arguments (not in the program path); it splits words on spaces and unquotes `"..."` with C-style
escapes; and it refuses to run a program whose path holds quotes or backslashes. A path like
`/opt/50%n $HOME/...` must therefore be written `"/opt/50%%n $HOME/..."`.

Also where units go (`unit_path`) and writing one (`write_unit`), for both `sollol install-service`
and `sollol rpc install-service`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

_PLAIN = re.compile(r"[A-Za-z0-9_./:@+,=-]+")
_UNSAFE_PATH = re.compile(r"[\x00-\x1f\x7f\"'\\]")


def _quoted(word: str) -> str:
    if _PLAIN.fullmatch(word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def exec_line(args: Sequence[str]) -> str:
    """`ExecStart=`'s value: `%` doubled everywhere, `$` doubled in arguments, words with
    anything but plain characters in double quotes; ValueError for a program path systemd
    cannot run."""
    if _UNSAFE_PATH.search(args[0]):
        raise ValueError(f"systemd cannot run a program whose path holds quotes, backslashes "
                         f"or control characters: {args[0]!r}")
    words = []
    for index, arg in enumerate(args):
        word = arg.replace("%", "%%")
        if index:
            word = word.replace("$", "$$")
        words.append(_quoted(word))
    return " ".join(words)


def environment_line(name: str, value: str, *, specifiers: bool = False) -> str:
    """`Environment=`'s value for NAME=VALUE; `%` doubled unless `specifiers` (e.g. `%S`)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"not an environment variable name: {name!r}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError(f"{name}: control characters cannot go in a unit file")
    return _quoted(f"{name}={value if specifiers else value.replace('%', '%%')}")


def path_value(path: str) -> str:
    """A path for settings such as `ReadWritePaths=` (specifiers expanded, words unquoted)."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise ValueError(f"control characters cannot go in a unit file: {path!r}")
    return _quoted(path.replace("%", "%%"))


def unit_path(name: str, user_unit: bool) -> Path:
    """Where systemd looks for the unit: the user's config dir, or /etc/systemd/system."""
    if user_unit:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        return base / "systemd" / "user" / f"{name}.service"
    return Path("/etc/systemd/system") / f"{name}.service"


def write_unit(text: str, name: str, user_unit: bool,
               output: Path | None = None) -> tuple[Path, str]:
    """Write a unit where systemd finds it (or to `output`); return its path and the commands
    that start it. PermissionError when a system unit is written without root."""
    target = output or unit_path(name, user_unit)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    scope = "--user " if user_unit else ""
    return target, (f"systemctl {scope}daemon-reload && "
                    f"systemctl {scope}enable --now {target.stem}")


GPU_DEVICES = ("char-drm", "char-kfd", "char-nvidia-frontend", "char-nvidia-uvm",
               "char-nvidia-caps", "char-nvidiactl")
"""Device classes (from /proc/devices) of GPUs: DRM (Vulkan, AMD, Intel), ROCm's KFD, NVIDIA.
A class this machine does not have is skipped by systemd."""


def worker_sandbox(user_unit: bool, run_as: str | None, *, proc_subset: bool = True) -> list[str]:
    """The `[Service]` hardening of a unit that runs a network worker with the GPUs in reach
    (`sollol rpc install-service`, `sollol join --install-service`): no privileges, a read-only
    system, a system-call filter that fails refused calls with EPERM instead of killing the
    worker (a GPU driver may probe something unusual), and a closed device list that lets the
    GPUs through (PrivateDevices would hide them). `proc_subset=False` keeps /proc/meminfo
    readable (a worker that reports its free memory)."""
    lines: list[str] = []
    if not user_unit:
        lines += [f"User={run_as}"] if run_as else ["DynamicUser=yes"]
        lines += ["CapabilityBoundingSet=", "AmbientCapabilities=", "ProtectKernelModules=yes",
                  "ProtectKernelLogs=yes", "ProtectClock=yes", "ProtectHostname=yes"]
    return [
        *lines,
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        "PrivateTmp=yes",
        "ProtectKernelTunables=yes",
        "ProtectControlGroups=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "SystemCallFilter=~@privileged",
        "SystemCallErrorNumber=EPERM",
        "ProtectProc=invisible",
        *(["ProcSubset=pid"] if proc_subset else []),
        "UMask=0077",
        "DevicePolicy=closed",
        *(f"DeviceAllow={device} rw" for device in GPU_DEVICES),
    ]
