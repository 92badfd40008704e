"""The config keys the sharding plugin reads (declared through `sollol_register_settings`)."""

from __future__ import annotations

from typing import Any

from sollol.config import Setting
from sollol.units import at_least, cidr, port_list, positive


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
            check=positive),
    Setting("rpc_max_coordinators", "int", 1,
            "Coordinators running at once (each holds its rpc-servers exclusively); the least "
            "recently used idle one is stopped first.", check=at_least(1)),
    Setting("rpc_probe_timeout", "float", 2.0,
            "Seconds an RPC health probe (HELLO, device memory) may take.", check=positive),
    Setting("rpc_startup_timeout", "float", 600.0,
            "Seconds a coordinator may take to load a model (until /health answers 200).",
            check=positive),
    Setting("rpc_wait_timeout", "float", 120.0,
            "Seconds a request waits for busy rpc-servers to free up before it is refused.",
            check=positive),
    Setting("rpc_ctx_size", "int", 4096,
            "Context length each coordinator is started with (0: the model's own).",
            check=at_least(0)),
    Setting("rpc_coordinator_args", "list", [],
            "Extra llama-server arguments, e.g. [\"--no-repack\", \"-t\", \"2\"].", check=_args),
    Setting("rpc_verbose_log", "bool", False,
            "Start coordinators with -v: exact per-layer placement in the layer report, but "
            "~20 log lines per generated token."),
    Setting("rpc_discover_loopback", "bool", True,
            "When rpc_backends is empty, use rpc-servers answering on 127.0.0.1 at "
            "rpc_discovery_ports."),
    Setting("rpc_discovery_ports", "list", [50052],
            "Ports tried on loopback (and in rpc_discovery_cidr).", check=port_list),
    Setting("rpc_discovery_cidr", "str", None,
            "A network to search for rpc-servers (only this one is ever scanned), "
            "e.g. 10.0.0.0/28.", optional=True, check=cidr),
    Setting("rpc_state_dir", "str", None,
            "Folder for coordinator logs, pid files and layer reports "
            "(default: the user state dir).", optional=True),
)
