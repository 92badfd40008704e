"""A hardened systemd unit for a `ggml-rpc-server` (what `sollol rpc install-service` writes)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import attrs

CACHE_NAME = "sollol-rpc"


@attrs.frozen
class ServiceSpec:
    """What the unit runs and for whom."""

    binary: Path
    host: str = "127.0.0.1"
    port: int = 50052
    threads: int | None = None
    cache: bool = False
    user_unit: bool = False
    run_as: str | None = None
    """The account a system unit runs as (None: root's manager picks `DynamicUser`)."""


def unit_path(name: str, user_unit: bool) -> Path:
    """Where systemd looks for the unit: the user's config dir, or /etc/systemd/system."""
    if user_unit:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        return base / "systemd" / "user" / f"{name}.service"
    return Path("/etc/systemd/system") / f"{name}.service"


def render(spec: ServiceSpec) -> str:
    """The unit file's text."""
    args = [str(spec.binary), "-H", spec.host, "-p", str(spec.port)]
    if spec.threads:
        args += ["-t", str(spec.threads)]
    if spec.cache:
        args.append("-c")
    lines = [
        "[Unit]",
        "Description=llama.cpp RPC server for SOLLOL model sharding",
        "Documentation=https://github.com/ggml-org/llama.cpp/tree/master/tools/rpc",
        "# ggml-rpc-server has no authentication: bind it to loopback or a trusted network only.",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        "ExecStart=" + shlex.join(args),
        # the tensor cache lives in $LLAMA_CACHE/rpc; CacheDirectory makes it writable
        f"Environment=LLAMA_CACHE=%C/{CACHE_NAME}",
        f"CacheDirectory={CACHE_NAME}",
        "Restart=on-failure",
        "RestartSec=2",
    ]
    if not spec.user_unit:
        lines += [f"User={spec.run_as}"] if spec.run_as else ["DynamicUser=yes"]
        lines += ["CapabilityBoundingSet=", "AmbientCapabilities=", "ProtectKernelModules=yes",
                  "ProtectKernelLogs=yes", "ProtectClock=yes", "ProtectHostname=yes"]
    lines += [
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
        "UMask=0077",
        "# GPU builds need the device nodes, so PrivateDevices is deliberately not set.",
        "",
        "[Install]",
        "WantedBy=" + ("default.target" if spec.user_unit else "multi-user.target"),
        "",
    ]
    return "\n".join(lines)
