"""The config keys the sharding plugin reads (declared through `sollol_register_settings`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sollol.config import Config, Setting
from sollol.core.units import at_least, cidr, non_negative, parse_bytes, port_list, positive
from sollol.models import check_host, join_host_port, split_host_port


def _host_port(value: Any) -> str:
    if isinstance(value, Mapping):
        value = f"{value.get('host', '')}:{value.get('port', '')}"
    host, port = split_host_port(str(value))
    if not host:
        raise ValueError("host:port with a host")
    check_host(host, str(value))  # "gpu box:50052" is a typo, not a host
    return join_host_port(host, port)


def _host_port_list(values: list[Any]) -> list[str]:
    try:
        return [_host_port(v) for v in values]
    except ValueError:
        raise ValueError("a list of host:port entries (e.g. 10.0.0.2:50052)") from None


def _args(values: list[Any]) -> list[str]:
    if not all(isinstance(v, str) for v in values):
        raise ValueError("a list of command-line arguments (strings)")
    return list(values)


def _memory_table(value: dict[str, Any]) -> dict[str, int]:
    try:
        return {str(k): parse_bytes(v) for k, v in value.items()}
    except ValueError as exc:
        raise ValueError(f"a table of rpc-server address -> memory size ({exc})") from None


def _drafts(value: dict[str, Any]) -> dict[str, str]:
    if not all(isinstance(v, str) and v for v in value.values()):
        raise ValueError("a table of sharded model -> draft model name or GGUF path")
    return {str(k): v for k, v in value.items()}


def _size(value: str) -> str:
    parse_bytes(value)  # raises ValueError("...") naming the expected form
    return value


BACKENDS = Setting("rpc_backends", "list", [], "rpc-servers for sharding, as host:port.",
                   check=_host_port_list)

SETTINGS: tuple[Setting, ...] = (
    BACKENDS,
    Setting("rpc_coordinator_mode", "str", "persistent",
            "persistent: keep a llama-server coordinator warm between requests; "
            "ephemeral: stop it after each request.", choices=("persistent", "ephemeral")),
    Setting("rpc_idle_timeout", "float", 900.0,
            "Seconds a persistent coordinator may sit idle before it is stopped.",
            check=positive),
    Setting("rpc_max_coordinators", "int", 4,
            "Coordinators (sharded models) running at once, each on its own rpc-servers.",
            check=at_least(1)),
    Setting("rpc_preload", "list", [],
            "Models to load onto rpc-servers when the gateway starts, so their first request "
            "finds a warm coordinator (persistent mode).", check=_args),
    Setting("rpc_placement", "str", "fewest",
            "fewest: give each model the fewest free rpc-servers that hold it (others can run "
            "beside it); all: spread every model over every free rpc-server.",
            choices=("fewest", "all")),
    Setting("rpc_when_busy", "str", "evict",
            "When no free rpc-servers can take a model: evict (stop the least recently used "
            "idle coordinator) or wait (queue until rpc_wait_timeout, then 429).",
            choices=("evict", "wait")),
    Setting("rpc_backend_memory", "table", {},
            "Memory each rpc-server may give, by address (e.g. {\"10.0.0.7:50052\" = "
            "\"12 GiB\"}); a CPU rpc-server reports all of its host's RAM as free.",
            check=_memory_table),
    Setting("rpc_local_memory", "str", "0",
            "Memory of the gateway machine a sharded model may use (e.g. \"8 GiB\"): as many "
            "whole layers as fit stay in the coordinator's own memory, the rest is sharded.",
            check=_size),
    Setting("rpc_memory_reserve", "str", "0",
            "Memory left free on every rpc-server device (e.g. \"512 MiB\"): compute buffers "
            "and whatever else runs there.", check=_size),
    Setting("rpc_probe_timeout", "float", 2.0,
            "Seconds an RPC health probe (HELLO, device memory) may take.", check=positive),
    Setting("rpc_link_timeout", "float", 20.0,
            "Seconds a coordinator's connection to an rpc-server may go unanswered (keepalive "
            "probes while it waits, acknowledgements of what it sent) before the kernel drops "
            "it: the coordinator then exits and restarts on the rpc-servers it can reach. 0: "
            "never (llama-server waits forever on a cut link).", check=non_negative),
    Setting("rpc_startup_timeout", "float", 600.0,
            "Seconds a coordinator may take to load a model (until /health answers 200).",
            check=positive),
    Setting("rpc_wait_timeout", "float", 120.0,
            "Seconds a request waits for busy rpc-servers to free up before it is refused.",
            check=positive),
    Setting("rpc_queue_size", "int", 64,
            "Requests that may wait at once for busy rpc-servers (rpc_when_busy = \"wait\") or "
            "for a free slot of their model's coordinator (rpc_parallel); "
            "beyond it clients get 429 with Retry-After at once.", check=at_least(0)),
    Setting("rpc_ctx_size", "int", 4096,
            "Context length of each of a coordinator's slots (0: the model's own, shared by "
            "the slots).", check=at_least(0)),
    Setting("rpc_parallel", "int", 0,
            "Sequences a coordinator runs at once (llama-server --parallel, continuous "
            "batching, rpc_ctx_size of context each): the route sends it this many requests at "
            "once and queues the rest (rpc_queue_size, then 429). 0: llama-server's own choice "
            "(its slots share rpc_ctx_size) and no limit in the route.", check=at_least(0)),
    Setting("rpc_draft_models", "table", {},
            "Speculative decoding: a draft model per sharded model (e.g. {\"big:70b\" = "
            "\"small:1b\"}, names or GGUF paths). The draft runs in the coordinator on the "
            "gateway machine and must share the model's vocabulary.", check=_drafts),
    Setting("rpc_draft_max", "int", 8,
            "Most tokens the draft model proposes per verification pass of the sharded model.",
            check=at_least(1)),
    Setting("rpc_coordinator_args", "list", [],
            "Extra llama-server arguments, e.g. [\"--no-repack\", \"-t\", \"2\"].", check=_args),
    Setting("rpc_fill_caches", "bool", False,
            "Before a coordinator loads, send each rpc-server started with -c the tensors over "
            "10 MiB it will hold, all shards at once; the load then sends hashes for them."),
    Setting("rpc_load_relay", "bool", False,
            "Put a write-behind relay on the gateway between each coordinator and each "
            "rpc-server: a load sends every shard its weights at the same time instead of one "
            "shard after another (spooled in memory, then in a temporary file)."),
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


def backends(config: Config) -> list[str]:
    """The configured rpc-servers (none when `config` was loaded without this plugin's keys)."""
    return config.read(BACKENDS)
