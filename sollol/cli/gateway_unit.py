"""A hardened systemd unit for the gateway itself (what `sollol install-service` writes)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import attrs

from sollol.cli.systemd import environment_line, exec_line, path_value

STATE_NAME = "sollol"


@attrs.frozen
class GatewaySpec:
    """What the unit runs, for whom, with which config and environment."""

    python: Path
    config_file: Path
    environment: Mapping[str, str] = attrs.field(factory=dict)
    args: tuple[str, ...] = ()
    """Extra `sollol run` arguments (e.g. `--access-log json`)."""
    user_unit: bool = False
    run_as: str | None = None
    """The account a system unit runs as (None: a `DynamicUser`)."""
    read_write: tuple[Path, ...] = ()
    """Folders the gateway writes besides its state directory (e.g. rpc_state_dir)."""
    grace: float = 10.0


def render(spec: GatewaySpec) -> str:
    """The unit file's text."""
    argv = [str(spec.python), "-m", "sollol", "run", "--config", str(spec.config_file),
            "--grace", f"{spec.grace:g}", *spec.args]
    environment = {"PYTHONUNBUFFERED": "1", "SOLLOL_CONFIG": str(spec.config_file),
                   **spec.environment}
    lines = [
        "[Unit]",
        "Description=SOLLOL gateway (Ollama and OpenAI APIs over a cluster of LLM servers)",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        "ExecStart=" + exec_line(argv),
        "ExecReload=/bin/kill -HUP $MAINPID",
        # coordinator logs, pid files and reports go to the unit's state directory (%S)
        "Environment=" + environment_line("XDG_STATE_HOME", "%S", specifiers=True),
        *(f"Environment={environment_line(k, v)}" for k, v in sorted(environment.items())),
        f"StateDirectory={STATE_NAME}",
        "Restart=on-failure",
        "RestartSec=2",
        # the gateway stops its coordinators itself: let it, within the grace period
        "KillMode=mixed",
        f"TimeoutStopSec={int(spec.grace) + 30}",
    ]
    if not spec.user_unit:
        lines += [f"User={spec.run_as}"] if spec.run_as else ["DynamicUser=yes"]
        lines += ["CapabilityBoundingSet=", "AmbientCapabilities=", "ProtectKernelModules=yes",
                  "ProtectKernelLogs=yes", "ProtectClock=yes", "ProtectHostname=yes",
                  "ProtectHome=read-only"]
    lines += [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        *(f"ReadWritePaths={path_value(str(path))}" for path in spec.read_write),
        "PrivateTmp=yes",
        "ProtectKernelTunables=yes",
        "ProtectControlGroups=yes",
        # AF_NETLINK: the sharding plugin reads TCP progress with `ss`
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "SystemCallArchitectures=native",
        "UMask=0077",
        "# coordinators on GPU builds need the device nodes: PrivateDevices is not set.",
        "",
        "[Install]",
        "WantedBy=" + ("default.target" if spec.user_unit else "multi-user.target"),
        "",
    ]
    return "\n".join(lines)
