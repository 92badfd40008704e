"""Pool nodes from the config, `OLLAMA_HOSTS`, the default address, or a subnet the user names.

Address syntax (one entry of `ollama_nodes` or `OLLAMA_HOSTS`):

- `host:port`, `host`, `http://host:port`, `https://host:port` -- detected by probing: Ollama's
  `/api/version` first, then an OpenAI-compatible `/v1/models`;
- `ollama://host:port` -- an Ollama server, never re-detected;
- `openai://host:port` (or `openai+https://host:port`) -- an OpenAI-compatible server such as
  `llama-server`, vLLM or LM Studio.

A missing port means 11434 (Ollama's default). Any form may carry the node's own key and a base
path: `openai://KEY@host:8000/prefix` (`KEY` or `:KEY`: a bearer key; `USER:PASSWORD`: HTTP
Basic; %-encode `@ : /` in them; a trailing `/v1` is dropped). In TOML an entry may also be a
table `{url = "...", api_key = "..."}` or `{url = "...", api_key_env = "VAR"}` (the key read from
that environment variable), which keeps the key out of the file.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import attrs

from sollol.config import Config
from sollol.core.secret import bearer, redact_url, scrub, split_userinfo
from sollol.models import Backend, check_node_address, join_host_port, split_host_port

from .pool_settings import read

if TYPE_CHECKING:
    from sollol.core.runtime import ClusterRuntime

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
    """A Backend from one node address; raises ValueError naming the expected syntax (never
    echoing a key the address carries)."""
    try:
        return _parse(text, source)
    except ValueError as exc:
        raise ValueError(scrub(str(exc), text)) from None


def parse_entry(entry: str | Mapping[str, Any], source: str = "config",
                env: Mapping[str, str] | None = None) -> Backend:
    """A Backend from one `ollama_nodes` entry: an address, or a table with `url` and the node's
    `api_key` or `api_key_env`."""
    if isinstance(entry, str):
        return parse_node(entry, source)
    backend = parse_node(entry["url"], source)
    if "api_key_env" in entry:
        env = os.environ if env is None else env
        key = env.get(entry["api_key_env"], "").strip()
        if not key:
            raise ValueError(f"node {redact_url(entry['url'])!r}: api_key_env "
                             f"{entry['api_key_env']!r} is not set in the environment")
        return attrs.evolve(backend, credentials=bearer(key))
    if "api_key" in entry:
        return attrs.evolve(backend, credentials=bearer(entry["api_key"]))
    return backend


def _parse(text: str, source: str) -> Backend:
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
    if "?" in raw or "#" in raw:
        raise ValueError(f"node {text!r}: no query or fragment (a base path is fine)")
    raw, credentials = split_userinfo(raw)
    authority, _, path = raw.partition("/")
    try:
        host, port = split_host_port(authority, default_port=DEFAULT_PORT)
    except ValueError as exc:
        raise ValueError(f"node {text!r}: {exc}") from None
    if not host:
        raise ValueError(f"node {text!r}: no host")
    address = join_host_port(host, port)
    # OpenAI clients are configured with .../v1: accept that spelling of the server's root
    prefix = ("/" + path.strip("/")).removesuffix("/v1").rstrip("/") if path.strip("/") else ""
    labels = {"scheme": scheme, "source": source}
    if prefix:
        labels["path"] = prefix
    if detect:
        labels["detect"] = "1"
    return Backend(id=address + prefix, kind=kind, address=address, labels=labels,
                   credentials=credentials)


def pool_dialects(cluster: ClusterRuntime) -> dict[str, str]:
    """{kind: dialect} of every backend kind the pool can serve: ours, and any other plugin's
    kind whose `api` is a dialect the gateway speaks (so a third-party plugin can bring a new
    server kind with its own discovery and health check, and the pool balances over it)."""
    served = {kind.name: kind.api for kind in cluster.kinds.values() if kind.api in DIALECTS}
    return served or {kind: kind for kind in KINDS}


def base_url(backend: Backend) -> str:
    """The node's server root, e.g. http://10.0.0.5:11434 or http://10.0.0.9:8000/prefix (never
    its key: that goes in a header, `backend.auth_headers()`)."""
    return (f"{backend.labels.get('scheme', 'http')}://{backend.address}"
            f"{backend.labels.get('path', '')}")


def discover(config: Config) -> list[Backend]:
    """Configured nodes (OLLAMA_HOSTS is already folded into `ollama_nodes`), scanned ones, or
    the default local Ollama when nothing at all is configured."""
    source = config.sources.get("ollama_nodes", "config")
    found: dict[str, Backend] = {}
    for entry in read(config, "ollama_nodes"):
        backend = parse_entry(entry, source)
        found.setdefault(backend.id, backend)
    cidr = read(config, "pool_discovery_cidr")
    if cidr:
        for backend in scan(cidr, read(config, "pool_discovery_port")):
            found.setdefault(backend.id, backend)
    if not found and not cidr:
        found[DEFAULT_NODE] = parse_node(DEFAULT_NODE, "default")
    return list(found.values())


def scan(cidr: str, port: int, *, timeout: float = 0.5, workers: int = 64) -> list[Backend]:
    """Ollama servers answering `/api/version` in a subnet the user named (bounded, timed)."""
    import httpx  # only a scan needs it: command registration imports this module

    network = ipaddress.ip_network(cidr, strict=False)
    hosts = [str(h) for h in (network.hosts() if network.num_addresses > 2 else network)]

    def probe(host: str) -> Backend | None:
        address = join_host_port(host, port)
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
