"""The config keys the sharding plugin reads (declared through `sollol_register_settings`)."""

from __future__ import annotations

import ipaddress
from typing import Any

from sollol.config import Setting

MAX_SCAN_HOSTS = 1024
"""A named CIDR larger than this is refused: discovery is for a rack, not a network."""


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("a number above 0")
    return value


def _not_negative(value: int) -> int:
    if value < 0:
        raise ValueError("0 or more")
    return value


def _at_least_one(value: int) -> int:
    if value < 1:
        raise ValueError("an integer of at least 1")
    return value


def _ports(values: list[Any]) -> list[int]:
    try:
        ports = [int(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError("a list of port numbers") from None
    if not all(0 < p < 65536 for p in ports):
        raise ValueError("a list of port numbers from 1 to 65535")
    return ports


def _cidr(value: str) -> str:
    try:
        network = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError("a CIDR such as 10.0.0.0/28") from None
    if network.num_addresses > MAX_SCAN_HOSTS:
        raise ValueError(f"a CIDR of at most {MAX_SCAN_HOSTS} addresses")
    return str(network)


def _args(values: list[Any]) -> list[str]:
    if not all(isinstance(v, str) for v in values):
        raise ValueError("a list of command-line arguments (strings)")
    return list(values)


SETTINGS: tuple[Setting, ...] = (
    Setting("rpc_coordinator_mode", "str", "persistent",
            "persistent: keep a llama-server coordinator warm between requests; "
            "ephemeral: stop it after each request.", choices=("persistent", "ephemeral")),
    Setting("rpc_idle_timeout", "float", 900.0,
            "Seconds a persistent coordinator may sit idle before it is stopped.",
            check=_positive),
    Setting("rpc_max_coordinators", "int", 1,
            "Coordinators running at once (each holds its rpc-servers exclusively); the least "
            "recently used idle one is stopped first.", check=_at_least_one),
    Setting("rpc_probe_timeout", "float", 2.0,
            "Seconds an RPC health probe (HELLO, device memory) may take.", check=_positive),
    Setting("rpc_startup_timeout", "float", 600.0,
            "Seconds a coordinator may take to load a model (until /health answers 200).",
            check=_positive),
    Setting("rpc_wait_timeout", "float", 120.0,
            "Seconds a request waits for busy rpc-servers to free up before it is refused.",
            check=_positive),
    Setting("rpc_ctx_size", "int", 4096,
            "Context length each coordinator is started with (0: the model's own).",
            check=_not_negative),
    Setting("rpc_coordinator_args", "list", [],
            "Extra llama-server arguments, e.g. [\"--no-repack\", \"-t\", \"2\"].", check=_args),
    Setting("rpc_verbose_log", "bool", False,
            "Start coordinators with -v: exact per-layer placement in the layer report, but "
            "~20 log lines per generated token."),
    Setting("rpc_discover_loopback", "bool", True,
            "When rpc_backends is empty, use rpc-servers answering on 127.0.0.1 at "
            "rpc_discovery_ports."),
    Setting("rpc_discovery_ports", "list", [50052],
            "Ports tried on loopback (and in rpc_discovery_cidr).", check=_ports),
    Setting("rpc_discovery_cidr", "str", None,
            "A network to search for rpc-servers (only this one is ever scanned), "
            "e.g. 10.0.0.0/28.", optional=True, check=_cidr),
    Setting("rpc_state_dir", "str", None,
            "Folder for coordinator logs, pid files and layer reports "
            "(default: the user state dir).", optional=True),
)
