"""A hardened systemd unit for `sollol join` (what `sollol join --install-service` writes).

The join token never goes into the unit text (units are world-readable): it is written to an
environment file of mode 0600 that systemd reads as root (`EnvironmentFile=`), and the agent
takes it from `SOLLOL_JOIN_TOKEN`. The agent runs the rpc-server on loopback and the tunnel on
`--listen`; the sandbox is that of `sollol rpc install-service` (system-call filter, hidden
/proc, closed device policy with the GPUs let through), with its state in `StateDirectory=`.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from sollol.cli.systemd import environment_line, exec_line, worker_sandbox

STATE_NAME = "sollol-join"
TOKEN_VARIABLE = "SOLLOL_JOIN_TOKEN"


@attrs.frozen
class JoinUnit:
    python: Path
    binaries: Path | None
    """The folder holding ggml-rpc-server: SOLLOL_LLAMA_CPP_DIR (None: --no-rpc)."""
    token_file: Path
    """The 0600 file holding `SOLLOL_JOIN_TOKEN=...`."""
    arguments: tuple[str, ...]
    """`sollol join`'s arguments (URL, --name, --listen, ...), without the token."""
    user_unit: bool = False
    run_as: str | None = None


def token_file_text(token: str) -> str:
    return f"{TOKEN_VARIABLE}={token}\n"


def render(unit: JoinUnit) -> str:
    """The unit file's text."""
    args = [str(unit.python), "-m", "sollol", "join", *unit.arguments]
    execute = exec_line(args) + f" --state-dir %S/{STATE_NAME}"
    lines = [
        "[Unit]",
        "Description=SOLLOL cluster member (sollol join: rpc-server and mutual-TLS tunnel)",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        "ExecStart=" + execute,
        "# the join token: a 0600 file read by systemd, never written into this unit",
        "EnvironmentFile=" + str(unit.token_file).replace("%", "%%"),
        "Environment=PYTHONUNBUFFERED=1",
        f"Environment=SOLLOL_RPC_STATE_DIR=%S/{STATE_NAME}/rpc",
        f"Environment=LLAMA_CACHE=%C/{STATE_NAME}",
    ]
    if unit.binaries is not None:
        lines.append("Environment=" + environment_line("SOLLOL_LLAMA_CPP_DIR",
                                                       str(unit.binaries)))
    lines += [
        f"StateDirectory={STATE_NAME}",
        "StateDirectoryMode=0700",
        f"CacheDirectory={STATE_NAME}",
        # a leave on SIGTERM, then its children are stopped; rejoins are its own business
        "KillMode=mixed",
        "TimeoutStopSec=30",
        "Restart=on-failure",
        "RestartSec=5",
    ]
    # not ProcSubset=pid: the heartbeat reads /proc/meminfo
    lines += worker_sandbox(unit.user_unit, unit.run_as, proc_subset=False)
    lines += [
        "",
        "[Install]",
        "WantedBy=" + ("default.target" if unit.user_unit else "multi-user.target"),
        "",
    ]
    return "\n".join(lines)
