"""A hardened systemd unit for an rpc-server (what `sollol rpc install-service` writes).

The unit runs `sollol rpc serve`, not a bare `ggml-rpc-server`: serve drops a client that stops
answering (a coordinator behind a cut link), which the bare server never does.

ggml-rpc-server has no authentication, so the unit itself limits who can reach it
(`IPAddressAllow`/`IPAddressDeny` from `--allow`) and what a crafted RPC message could do to the
machine if the server had a bug (system-call filter, hidden /proc, closed device policy with the
GPU devices let through).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from pathlib import Path

import attrs

from sollol.cli.systemd import GPU_DEVICES, environment_line, exec_line, worker_sandbox

__all__ = ["GPU_DEVICES", "ServiceSpec", "exec_line", "parse_allow", "render"]

CACHE_NAME = "sollol-rpc"


def parse_allow(text: str) -> tuple[str, ...]:
    """`--allow CIDR,...` as normalised networks; ValueError naming a bad entry."""
    networks = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part == "localhost":
            networks.append(part)
            continue
        try:
            networks.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError:
            raise ValueError(f"--allow: {part!r} is not an address or CIDR network "
                             "(e.g. 10.0.0.0/24,fd00::/8)") from None
    if not networks:
        raise ValueError("--allow: name at least one address or CIDR network")
    return tuple(dict.fromkeys(networks))


@attrs.frozen
class ServiceSpec:
    """What the unit runs and for whom."""

    python: Path
    """The interpreter that has SOLLOL: the unit runs `PYTHON -m sollol rpc serve`."""
    binaries: Path
    """The folder holding ggml-rpc-server (and llama-server): SOLLOL_LLAMA_CPP_DIR."""
    host: str = "127.0.0.1"
    port: int = 50052
    threads: int | None = None
    cache: bool = False
    client_timeout: float | None = None
    """`sollol rpc serve --client-timeout` (None: serve's default)."""
    user_unit: bool = False
    run_as: str | None = None
    """The account a system unit runs as (None: root's manager picks `DynamicUser`)."""
    allow: tuple[str, ...] = ()
    """Networks allowed to connect (`IPAddressAllow`); everyone else is dropped. Empty: only
    loopback when bound to loopback, no filter for a wider bind (the CLI warns)."""


def render(spec: ServiceSpec) -> str:
    """The unit file's text."""
    args = [str(spec.python), "-m", "sollol", "rpc", "serve", "--host", spec.host, "--port",
            str(spec.port)]
    if spec.threads:
        args += ["--threads", str(spec.threads)]
    if spec.client_timeout is not None:
        args += ["--client-timeout", f"{spec.client_timeout:g}"]
    execute = exec_line(args)
    if spec.cache:  # %C: systemd's cache folder, which CacheDirectory= makes writable
        execute += f" --cache %C/{CACHE_NAME}"
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
        "ExecStart=" + execute,
        "Environment=PYTHONUNBUFFERED=1",
        "Environment=" + environment_line("SOLLOL_LLAMA_CPP_DIR", str(spec.binaries)),
        # the tensor cache lives in $LLAMA_CACHE/rpc; CacheDirectory makes it writable
        f"Environment=LLAMA_CACHE=%C/{CACHE_NAME}",
        f"CacheDirectory={CACHE_NAME}",
        "Restart=on-failure",
        "RestartSec=2",
    ]
    lines += worker_sandbox(spec.user_unit, spec.run_as)
    lines += [
        *_ip_lines(spec),
        "",
        "[Install]",
        "WantedBy=" + ("default.target" if spec.user_unit else "multi-user.target"),
        "",
    ]
    return "\n".join(lines)


def _ip_lines(spec: ServiceSpec) -> Iterable[str]:
    allow = spec.allow
    if not allow and _loopback(spec.host):
        allow = ("localhost",)
    if allow:
        yield "# ggml-rpc-server has no authentication: only these networks may connect"
        yield "IPAddressAllow=" + " ".join(dict.fromkeys(("localhost", *allow)))
        yield "IPAddressDeny=any"


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
