"""The config keys the pool reads, and a typed view of them for one running pool.

Each default is written once, in its `Setting`: `PoolSettings` takes its field defaults from the
Settings and reads a config through them (`Config.read`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import attrs

from sollol.config import Config, Setting, core_setting
from sollol.core.secret import REDACTED, redact_url, scrub
from sollol.core.units import at_least, cidr, non_negative, parse_bytes, port_number, positive
from sollol.models import check_node_address

_NODE_FIELDS = {"url", "api_key", "api_key_env"}
_NODE_EXPECTED = ("a list of node addresses (host:port, http://host:port, "
                  "openai://KEY@host:port/prefix) or tables {url, api_key | api_key_env}")


def _node_address(text: str) -> str:
    try:
        check_node_address(text)
    except ValueError as exc:
        raise ValueError(f"{_NODE_EXPECTED}; {scrub(str(exc), text)}") from None
    return text.strip()


def _node_entry(value: Any) -> str | dict[str, str]:
    if isinstance(value, str) and value.strip():
        return _node_address(value)
    if not isinstance(value, Mapping) or set(value) - _NODE_FIELDS:
        raise ValueError(_NODE_EXPECTED)
    if not (isinstance(value.get("url"), str) and value["url"].strip()):
        raise ValueError(f"{_NODE_EXPECTED}: a table needs a 'url'")
    _node_address(value["url"])
    if "api_key" in value and "api_key_env" in value:
        raise ValueError(f"{_NODE_EXPECTED}: one of 'api_key' or 'api_key_env'")
    for name in ("api_key", "api_key_env"):
        if name in value and not (isinstance(value[name], str) and value[name].strip()
                                  and value[name].isprintable()):
            raise ValueError(f"{_NODE_EXPECTED}: {name!r} a printable string")
    return {k: v.strip() for k, v in value.items()}


def _node_list(values: list[Any]) -> list[str | dict[str, str]]:
    return [_node_entry(v) for v in values]


def _redact_nodes(values: Any) -> Any:
    """`ollama_nodes` for display: keys in URLs and tables as `***`."""
    if not isinstance(values, list):
        return "<hidden>"
    shown: list[Any] = []
    for value in values:
        if isinstance(value, str):
            shown.append(redact_url(value))
        elif isinstance(value, Mapping):
            # anything but the URL and the variable's name may be a key (a misspelled field too)
            shown.append({k: (redact_url(v) if k == "url" and isinstance(v, str) else
                              v if k == "api_key_env" else REDACTED)
                          for k, v in value.items()})
        else:
            shown.append("<hidden>")
    return shown


def _memory_table(value: dict[str, Any]) -> dict[str, int]:
    try:
        return {str(k): parse_bytes(v) for k, v in value.items()}
    except ValueError as exc:
        raise ValueError(f"a table of node address -> memory size ({exc})") from None


NODES = Setting(
    "ollama_nodes", "list", [],
    "Pool nodes (Ollama or OpenAI-compatible), as host:port or URL. OLLAMA_HOSTS is read too. "
    "A node's own key: openai://KEY@host:port or a table {url, api_key | api_key_env}.",
    check=_node_list, redact=_redact_nodes, extra_env="OLLAMA_HOSTS")

SETTINGS: tuple[Setting, ...] = (
    NODES,
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


_OWN = {setting.name: setting for setting in SETTINGS}


def _field(key: str, **kwargs: Any) -> Any:
    """A field read from config key `key` (the pool's or the core's), with its Setting's default."""
    setting = _OWN.get(key) or core_setting(key)
    default = setting.default
    value = (attrs.Factory(lambda: copy.deepcopy(default)) if isinstance(default, list | dict)
             else default)
    return attrs.field(default=value, metadata={"setting": setting}, **kwargs)


@attrs.frozen
class PoolSettings:
    """The pool's settings, read once from a Config."""

    concurrency: int = _field("pool_node_concurrency")
    queue_size: int = _field("pool_queue_size")
    queue_timeout: float = _field("pool_queue_timeout")
    health_interval: float = _field("health_interval")
    health_timeout: float = _field("pool_health_timeout")
    connect_timeout: float = _field("connect_timeout")
    request_timeout: float = _field("request_timeout")
    backoff_max: float = _field("pool_probe_backoff_max")
    eject_failures: int = _field("pool_eject_failures")
    eject_seconds: float = _field("pool_eject_seconds")
    eject_max_seconds: float = _field("pool_eject_max_seconds")
    cold_penalty: float = _field("pool_cold_penalty")
    affinity_seconds: float = _field("pool_affinity_seconds")
    warmup_seconds: float = _field("pool_warmup_seconds")
    manage_idle_timeout: float = _field("pool_manage_idle_timeout")
    memory: Mapping[str, int] = _field("pool_node_memory", converter=dict)

    @classmethod
    def from_config(cls, config: Config) -> PoolSettings:
        return cls(**{f.name: config.read(f.metadata["setting"]) for f in attrs.fields(cls)})


def read(config: Config, key: str) -> Any:
    """One of the pool's keys, with its Setting's default when `config` lacks it."""
    return config.read(_OWN[key])
