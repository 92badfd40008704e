"""Pool nodes from the config, `OLLAMA_HOSTS`, the default address, or a subnet the user names.

Address syntax (one entry of `ollama_nodes` or `OLLAMA_HOSTS`):

- `host:port`, `host`, `http://host:port`, `https://host:port` -- detected by probing: Ollama's
  `/api/version` first, then an OpenAI-compatible `/v1/models`;
- `ollama://host:port` -- an Ollama server, never re-detected;
- `openai://host:port` (or `openai+https://host:port`) -- an OpenAI-compatible server such as
  `llama-server`, vLLM or LM Studio.

A missing port means 11434 (Ollama's default).
"""

from __future__ import annotations

import ipaddress
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import httpx

from sollol.config import Config
from sollol.models import Backend, check_node_address, split_host_port

if TYPE_CHECKING:
    from sollol.cluster import Cluster

OLLAMA = "ollama"
OPENAI = "openai"
KINDS = (OLLAMA, OPENAI)
DIALECTS = frozenset(KINDS)  # what the gateway can send requests in
DEFAULT_PORT = 11434
DEFAULT_NODE = "127.0.0.1:11434"
_PREFIXES = {
    "ollama://": (OLLAMA, "http", False), "ollama+https://": (OLLAMA, "https", False),
    "openai://": (OPENAI, "http", False), "openai+https://": (OPENAI, "https", False),
    "http://": (OLLAMA, "http", True), "https://": (OLLAMA, "https", True),
}


def parse_node(text: str, source: str = "config") -> Backend:
    """A Backend from one node address; raises ValueError naming the expected syntax."""
    raw = text.strip()
    try:  # "http//host" is a typo, not a node named "http"
        check_node_address(raw, DEFAULT_PORT)
    except ValueError as exc:
        raise ValueError(f"node {exc}") from None
    kind, scheme, detect = OLLAMA, "http", True
    lowered = raw.lower()
    for prefix, meaning in _PREFIXES.items():
        if lowered.startswith(prefix):
            kind, scheme, detect = meaning
            raw = raw[len(prefix):]
            break
    else:
        if "://" in raw:
            msg = (f"node {text!r}: unknown scheme (use host:port, http://, https://, "
                   "ollama:// or openai://)")
            raise ValueError(msg)
    authority = raw.split("/", 1)[0]
    try:
        host, port = split_host_port(authority, default_port=DEFAULT_PORT)
    except ValueError as exc:
        raise ValueError(f"node {text!r}: {exc}") from None
    if not host:
        raise ValueError(f"node {text!r}: no host")
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    labels = {"scheme": scheme, "source": source}
    if detect:
        labels["detect"] = "1"
    return Backend(id=address, kind=kind, address=address, labels=labels)


def pool_dialects(cluster: Cluster) -> dict[str, str]:
    """{kind: dialect} of every backend kind the pool can serve: ours, and any other plugin's
    kind whose `api` is a dialect the gateway speaks (so a third-party plugin can bring a new
    server kind with its own discovery and health check, and the pool balances over it)."""
    served = {kind.name: kind.api for kind in cluster.kinds.values() if kind.api in DIALECTS}
    return served or {kind: kind for kind in KINDS}


def base_url(backend: Backend) -> str:
    """The node's server root, e.g. http://10.0.0.5:11434."""
    return f"{backend.labels.get('scheme', 'http')}://{backend.address}"


def discover(config: Config) -> list[Backend]:
    """Configured nodes (OLLAMA_HOSTS is already folded into `ollama_nodes`), scanned ones, or
    the default local Ollama when nothing at all is configured."""
    source = config.sources.get("ollama_nodes", "config")
    found: dict[str, Backend] = {}
    for entry in config["ollama_nodes"]:
        backend = parse_node(entry, source)
        found.setdefault(backend.id, backend)
    cidr = config.get("pool_discovery_cidr")
    if cidr:
        for backend in scan(cidr, config.get("pool_discovery_port", DEFAULT_PORT)):
            found.setdefault(backend.id, backend)
    if not found and not cidr:
        found[DEFAULT_NODE] = parse_node(DEFAULT_NODE, "default")
    return list(found.values())


def scan(cidr: str, port: int, *, timeout: float = 0.5, workers: int = 64) -> list[Backend]:
    """Ollama servers answering `/api/version` in a subnet the user named (bounded, timed)."""
    network = ipaddress.ip_network(cidr, strict=False)
    hosts = [str(h) for h in (network.hosts() if network.num_addresses > 2 else network)]

    def probe(host: str) -> Backend | None:
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            with socket.create_connection((host, port), timeout=timeout):
                pass
            # trust_env=False: a proxy from the environment must not answer for the LAN
            reply = httpx.get(f"http://{address}/api/version", timeout=timeout,
                              trust_env=False)
            version = reply.json().get("version")
        except (OSError, httpx.HTTPError, ValueError, AttributeError):
            return None
        if not isinstance(version, str):
            return None
        return Backend(id=address, kind=OLLAMA, address=address,
                       labels={"scheme": "http", "source": f"scan {cidr}"})

    with ThreadPoolExecutor(max_workers=min(workers, len(hosts) or 1)) as pool:
        return [b for b in pool.map(probe, hosts) if b is not None]
