"""Value types shared by the core and its plugins: frozen attrs classes, no I/O."""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs

from sollol.core.names import canonical_model, check_model_name
from sollol.core.secret import Secret

Api = Literal["ollama", "openai", "anthropic"]
"""The HTTP dialect a backend or a client speaks (clients also speak Anthropic's Messages API)."""

Endpoint = Literal["chat", "generate", "embed"]
"""What a routed request asks for."""


def _frozen_dict(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return dict(value or {})


@attrs.frozen
class Backend:
    """One machine-side server SOLLOL can send work to (a pool node or an rpc-server)."""

    id: str
    kind: str
    address: str
    capabilities: frozenset[str] = attrs.field(default=frozenset(), converter=frozenset)
    labels: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_dict)
    credentials: Secret | None = None
    """The `Authorization` header value SOLLOL sends to this backend (a node's own key), if
    any; prints as `***`. A base path, if any, is the label `path`."""

    def auth_headers(self) -> dict[str, str]:
        """{"Authorization": ...} for requests to this backend, or {}."""
        return {"Authorization": self.credentials.reveal()} if self.credentials else {}

    @property
    def host(self) -> str:
        return split_host_port(self.address)[0]

    @property
    def port(self) -> int:
        return split_host_port(self.address)[1]


@attrs.frozen
class BackendKind:
    """A kind of backend a plugin knows how to talk to; `api` is the dialect it speaks."""

    name: str
    api: str
    description: str = ""


@attrs.frozen
class HealthReport:
    """The outcome of one health probe of one backend."""

    backend_id: str
    healthy: bool
    detail: str = ""
    latency_s: float | None = None
    version: str | None = None
    models: tuple[str, ...] = ()
    loaded_models: tuple[str, ...] = ()
    memory_total: int | None = None
    memory_free: int | None = None
    checked_at: float = attrs.field(factory=time.time)
    extra: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_dict)


@attrs.frozen
class ResolvedModel:
    """Where a model's GGUF weights live on disk, as found by a `sollol_resolve_gguf` hook."""

    name: str
    path: Path = attrs.field(converter=Path)
    size: int
    source: str
    digest: str | None = None
    projectors: tuple[Path, ...] = ()
    adapters: tuple[Path, ...] = ()


@attrs.frozen
class ModelInfo:
    """What routing needs to know about a model's size, read from GGUF metadata or a node."""

    name: str
    file_size: int | None = None
    parameter_count: int | None = None
    layer_count: int | None = None
    quantization: str | None = None
    context_length: int | None = None
    embedding_length: int | None = None
    architecture: str | None = None
    kv_bytes_per_token: int | None = None
    source: str = ""

    def memory_estimate(self, context: int | None = None) -> int | None:
        """Bytes to hold the weights plus the KV cache for `context` tokens (None if unknown)."""
        if self.file_size is None:
            return None
        tokens = context if context is not None else (self.context_length or 0)
        return self.file_size + (self.kv_bytes_per_token or 0) * tokens


@attrs.frozen
class RouteRequest:
    """One client request, reduced to what the router needs."""

    model: str = attrs.field(validator=lambda _i, _a, name: check_model_name(name))
    """As the client wrote it (what is sent to a node); RequestError past MAX_MODEL_NAME."""
    endpoint: Endpoint = "chat"
    api: Api = "ollama"
    context_length: int | None = None
    stream: bool = False
    conversation_key: str | None = None
    needs: frozenset[str] = attrs.field(default=frozenset(), converter=frozenset)
    """Capabilities the request needs (see sollol/core/capabilities.py), e.g. {"embedding"}."""
    key: str = attrs.field(init=False, eq=False, default=attrs.Factory(
        lambda self: canonical_model(self.model), takes_self=True))
    """The model's canonical name (sollol/core/names.py): what anything per model is keyed by."""


@attrs.frozen
class BackendState:
    """A backend as a route sees it right now: health, models and memory."""

    backend: Backend
    healthy: bool
    models: frozenset[str] = attrs.field(default=frozenset(), converter=frozenset)
    loaded: frozenset[str] = attrs.field(default=frozenset(), converter=frozenset)
    memory_total: int | None = None
    memory_free: int | None = None
    in_flight: int = 0
    detail: str = ""
    capacity: int | None = None
    """Requests this backend serves at once, if the route knows (sizes fan-out concurrency)."""
    capabilities: Mapping[str, frozenset[str]] = attrs.field(factory=dict,
                                                             converter=_frozen_dict)
    """What the backend can do, per model name ("" for every model), where it is known."""
    lacks: Mapping[str, frozenset[str]] = attrs.field(factory=dict, converter=_frozen_dict)
    """Capabilities it answered it does not have (from 501/4xx replies), per model ("": all)."""
    server: str = ""
    """The kind of server, in words ("llama-server", "ollama"), for messages."""
    vram_used: int | None = None
    """GPU memory its loaded models hold, where the backend says (Ollama's `/api/ps`
    `size_vram`, summed); None where it does not."""
    devices: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    """llama.cpp's names of its devices (`Vulkan0`, `CUDA0`, `CPU`), where they are known."""

    def missing(self, model: str, needs: frozenset[str]) -> frozenset[str]:
        """Which of `needs` this backend is known not to have for `model`."""
        known = self.capabilities.get(model, self.capabilities.get(""))
        gone = needs & (self.lacks.get(model, frozenset()) | self.lacks.get("", frozenset()))
        return gone | (needs - known) if known is not None else gone


@attrs.frozen
class RouteState:
    """A snapshot of one route (for example "pool" or "sharding") for routing decisions."""

    name: str
    backends: tuple[BackendState, ...] = ()
    detail: str = ""
    capacity: int | None = None
    """Requests the whole route serves at once, when that is not the sum of its backends'
    capacities (sharding: a coordinator's slots, however many rpc-servers it spans)."""

    @property
    def healthy(self) -> tuple[BackendState, ...]:
        return tuple(b for b in self.backends if b.healthy)

    @property
    def available(self) -> bool:
        return bool(self.healthy)

    def serves(self, model: str) -> bool:
        """True when some healthy backend lists `model` (routes with no listing return False)."""
        return any(model in b.models for b in self.healthy)


@attrs.frozen
class RouteDecision:
    """Which route serves a request, chosen by which policy, and why (with the numbers)."""

    route: str
    policy: str
    reason: str
    backend: str | None = None
    numbers: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_dict)
    placement: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_dict)
    """Per route: whether it could serve the request and why (see sollol/core/placement.py)."""

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class ShardOffer:
    """An rpc-server free to hold part of a sharded model right now."""

    address: str
    free: tuple[int, ...]
    """Bytes each of its devices can take, in the server's device order (after any limit the
    operator declared and the configured reserve)."""
    latency_s: float | None = None
    """The last probe's round trip: a rough measure of the link to it."""
    devices: tuple[str, ...] = ()
    """llama.cpp's name of each device (`Vulkan0`, `CPU`) where known, in the same order."""

    @property
    def total_free(self) -> int:
        return sum(self.free)


@attrs.frozen
class ShardPlacement:
    """Where a sharded model goes: rpc-servers in `--rpc` order and a share per device, and why.

    No addresses means the model does not fit (the reason says why).
    """

    addresses: tuple[str, ...]
    split: tuple[float, ...] = ()
    """One share per device of each address, in order; empty: in proportion to free memory."""
    reason: str = ""
    numbers: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_dict)


@attrs.frozen
class RouteEvent:
    """Emitted after each routed request: what was asked, where it went and how it ended."""

    model: str
    endpoint: str
    api: str
    route: str
    policy: str
    reason: str
    backend: str | None
    status: int
    ok: bool
    duration_s: float
    attempts: int = 1
    tokens: int | None = None
    """Generated (output) tokens, when the backend reported them."""
    error: str | None = None
    time: float = attrs.field(factory=time.time)
    prompt_tokens: int | None = None
    """Prompt (input) tokens, when the backend reported them."""
    ttft_s: float | None = None
    """Seconds from the request's arrival to the first byte of a streamed reply (None: whole
    replies, where the first token is not seen apart from the last)."""
    upstream_s: float = 0.0
    """Seconds spent in exchanges with backends, over every attempt."""
    wait_s: float = 0.0
    """Seconds spent waiting for a backend slot (queued), over every attempt."""
    failovers: tuple[str, ...] = ()
    """Why each earlier attempt failed before the request moved to another backend: "connect",
    "timeout", "http_5xx" or "network"."""

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def join_host_port(host: str, port: int) -> str:
    """"host:port", an IPv6 host in brackets ("[fd00::1]:50052"); split_host_port reads it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_host_port(address: str, default_port: int | None = None) -> tuple[str, int]:
    """Split "host:port", "[v6]:port" or a URL's authority into (host, port)."""
    text = address.strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    text = text.split("/", 1)[0]
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if not port_text:
        if default_port is None:
            msg = f"{address!r} has no port (expected host:port)"
            raise ValueError(msg)
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        msg = f"{address!r} has a bad port (expected 1-65535)"
        raise ValueError(msg)
    return host, int(port_text)


_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?"
                   r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?$")


def check_node_address(text: str, default_port: int = 11434) -> None:
    """ValueError (with a likely fix) unless `text` is host[:port] or scheme://host[:port][/...].

    Catches what would otherwise become a node named after a typo: `http//host` is not a
    node "http", `http:/host` not a node "http:".
    """
    raw = text.strip()
    _scheme, sep, rest = raw.partition("://")
    if not sep:
        rest = raw
        if "/" in raw:
            raise ValueError(f"{text!r}: a node address is host:port or a URL"
                             f"{_typo_hint(raw)}")
    authority = rest.split("/", 1)[0].rsplit("@", 1)[-1]  # a URL may carry credentials
    host, _port = split_host_port(authority, default_port=default_port)
    check_host(host, raw)


def _typo_hint(address: str) -> str:
    for scheme in ("https", "http", "ollama", "openai"):
        for typo in (f"{scheme}//", f"{scheme}:/", f"{scheme}:"):
            if address.startswith(typo) and not address.startswith(f"{scheme}://"):
                return f" (did you mean {scheme}://{address[len(typo):].lstrip('/')}?)"
    return ""


def check_host(host: str, address: str) -> str:
    """`host` if it is a host name or an IP address; ValueError (with a likely fix) if not."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    if _HOST.match(host):
        return host
    hint = _typo_hint(address)
    msg = f"{address!r}: {host!r} is not a host name or IP address{hint}"
    raise ValueError(msg)


@attrs.frozen
class HttpRequest:
    """A request to a plugin's gateway endpoint (`sollol_gateway_endpoints`), body read whole."""

    method: str
    path: str
    body: bytes
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_dict)
    """Header names in lower case; a repeated header keeps its last value."""
    client: str = ""
    """The peer's address as the gateway's socket sees it (no proxy headers are trusted)."""
    query: str = ""


@attrs.frozen
class HttpReply:
    """A plugin endpoint's answer: a JSON body (any JSON-serialisable value) and a status."""

    status: int
    body: Any
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_dict)


@attrs.frozen
class GatewayEndpoint:
    """An HTTP endpoint a plugin serves on the gateway's port, under `/sollol/`.

    `public` endpoints need no access key (the handler authenticates the caller itself, as a
    join token or a signature does); the others need an admin key, like every `/sollol/` path.
    With `prefix`, the endpoint serves every path under `path` (which then ends with `/`).
    """

    path: str
    methods: tuple[str, ...] = attrs.field(converter=tuple)
    handler: Any = attrs.field(eq=False)
    """`async handler(HttpRequest) -> HttpReply`; a SollolError raised becomes its HTTP error."""
    public: bool = False
    prefix: bool = False
    max_body: int | None = None
    """Bytes of body this endpoint takes at most (a 413 beyond); None: `max_body_bytes`."""
