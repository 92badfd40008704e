"""The config keys the pool reads, and a typed view of them for one running pool."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from sollol.config import Config, Setting
from sollol.core.units import at_least, cidr, non_negative, parse_bytes, port_number, positive


def _memory_table(value: dict[str, Any]) -> dict[str, int]:
    try:
        return {str(k): parse_bytes(v) for k, v in value.items()}
    except ValueError as exc:
        raise ValueError(f"a table of node address -> memory size ({exc})") from None


SETTINGS: tuple[Setting, ...] = (
    Setting("pool_node_concurrency", "int", 4,
            "Requests one pool node serves at once (match the node's OLLAMA_NUM_PARALLEL or "
            "llama-server --parallel); more wait in the gateway's queue.", check=at_least(1)),
    Setting("pool_queue_size", "int", 256,
            "Requests that may wait for a free pool node; beyond it clients get 429.",
            check=at_least(0)),
    Setting("pool_queue_timeout", "float", 60.0,
            "Seconds a request may wait for a free pool node before it gets 429.",
            check=positive),
    Setting("pool_health_timeout", "float", 2.0,
            "Seconds one health probe of a pool node may take.", check=positive),
    Setting("pool_probe_backoff_max", "float", 60.0,
            "Longest pause between probes of a dead node (the pause doubles per failure).",
            check=positive),
    Setting("pool_eject_failures", "int", 3,
            "Consecutive failed requests (5xx, timeouts) that eject a node; a refused "
            "connection ejects at once.", check=at_least(1)),
    Setting("pool_eject_seconds", "float", 5.0,
            "First ejection time; it doubles with each further ejection.", check=positive),
    Setting("pool_eject_max_seconds", "float", 300.0, "Longest ejection time.",
            check=positive),
    Setting("pool_cold_penalty", "float", 5.0,
            "Seconds the balancer charges for a node that must load the model first.",
            check=positive),
    Setting("pool_affinity_seconds", "float", 1800.0,
            "How long a conversation stays tied to the node that served its last turn.",
            check=positive),
    Setting("pool_warmup_seconds", "float", 30.0,
            "Slow start for a node that comes back after being down or ejected: it takes one "
            "request at a time, doubling with each success, for at most this long (0: off).",
            check=non_negative),
    Setting("pool_manage_idle_timeout", "float", 300.0,
            "Seconds a node may go without a progress line during a pull, push or create "
            "before the fan-out ends its part with an error line.", check=positive),
    Setting("pool_node_memory", "table", {},
            "Memory per node, which Ollama does not report: {\"10.0.0.5:11434\": \"24GiB\"}.",
            check=_memory_table),
    Setting("pool_discovery_cidr", "str", None,
            "Subnet to scan for Ollama nodes (only when set; at most 1024 addresses).",
            optional=True, check=cidr),
    Setting("pool_discovery_port", "int", 11434, "Port probed by the subnet scan.",
            check=port_number),
)


@attrs.frozen
class PoolSettings:
    """The pool's settings, read once from a Config."""

    concurrency: int = 4
    queue_size: int = 256
    queue_timeout: float = 60.0
    health_interval: float = 5.0
    health_timeout: float = 2.0
    connect_timeout: float = 5.0
    request_timeout: float = 600.0
    backoff_max: float = 60.0
    eject_failures: int = 3
    eject_seconds: float = 5.0
    eject_max_seconds: float = 300.0
    cold_penalty: float = 5.0
    affinity_seconds: float = 1800.0
    warmup_seconds: float = 30.0
    manage_idle_timeout: float = 300.0
    memory: Mapping[str, int] = attrs.field(factory=dict)

    @classmethod
    def from_config(cls, config: Config) -> PoolSettings:
        get = config.get
        return cls(
            concurrency=get("pool_node_concurrency", 4), queue_size=get("pool_queue_size", 256),
            queue_timeout=get("pool_queue_timeout", 60.0),
            health_interval=get("health_interval", 5.0),
            health_timeout=get("pool_health_timeout", 2.0),
            connect_timeout=get("connect_timeout", 5.0),
            request_timeout=get("request_timeout", 600.0),
            backoff_max=get("pool_probe_backoff_max", 60.0),
            eject_failures=get("pool_eject_failures", 3),
            eject_seconds=get("pool_eject_seconds", 5.0),
            eject_max_seconds=get("pool_eject_max_seconds", 300.0),
            cold_penalty=get("pool_cold_penalty", 5.0),
            affinity_seconds=get("pool_affinity_seconds", 1800.0),
            warmup_seconds=get("pool_warmup_seconds", 30.0),
            manage_idle_timeout=get("pool_manage_idle_timeout", 300.0),
            memory=dict(get("pool_node_memory", {}) or {}),
        )
