"""`memory-fit`: the pool when one node can hold the model and its KV cache, else sharding."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from sollol.core.units import format_bytes
from sollol.errors import NoRouteAvailable
from sollol.models import BackendState, ModelInfo, RouteDecision, RouteRequest, RouteState
from sollol.routes import POOL, SHARDING

from .common import UNKNOWN_CHOICES, decided, route_down, unknown_size
from .name_match import listed
from .policy_settings import SettingsReader, default, fraction, positive_int

F16_BYTES = 2


@attrs.frozen
class Need:
    """The memory a model needs for one context length, in parts."""

    weights: int
    kv: int
    reserve: int
    context: int
    kv_per_token: int | None
    kv_basis: str  # "metadata", "upper bound" or "unknown"

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.reserve

    def describe(self, reserve_share: float) -> str:
        kv = {"metadata": f"KV {format_bytes(self.kv)}",
              "upper bound": f"KV at most {format_bytes(self.kv)}",
              "unknown": "KV unknown"}[self.kv_basis]
        return (f"{format_bytes(self.total)} (weights {format_bytes(self.weights)} + {kv} for "
                f"{self.context} tokens + {reserve_share:.0%} reserve)")

    def as_numbers(self) -> dict[str, Any]:
        return {"context": self.context, "weights_bytes": self.weights, "kv_bytes": self.kv,
                "kv_bytes_per_token": self.kv_per_token, "kv_basis": self.kv_basis,
                "reserve_bytes": self.reserve, "need_bytes": self.total}


def need_for(model: ModelInfo, context: int, reserve_share: float) -> Need | None:
    """What `model` needs for `context` tokens; None when its file size is unknown."""
    if model.file_size is None:
        return None
    per_token, basis = model.kv_bytes_per_token, "metadata"
    if per_token is None and model.layer_count and model.embedding_length:
        # K and V in f16 for every layer at full width: no model needs more (GQA needs less).
        per_token, basis = 2 * model.layer_count * model.embedding_length * F16_BYTES, "upper bound"
    if per_token is None:
        basis = "unknown"
    kv = (per_token or 0) * context
    reserve = round((model.file_size + kv) * reserve_share)
    return Need(model.file_size, kv, reserve, context, per_token, basis)


@attrs.frozen
class MemoryFit:
    """Pick the route whose memory can hold the model plus its KV cache for the asked context."""

    name: ClassVar[str] = "memory-fit"

    default_context: int = 4096
    reserve: float = 0.10
    unknown: str = POOL

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> MemoryFit:
        """Build from `policy_settings.memory-fit` (default_context, reserve, unknown)."""
        read = SettingsReader(cls.name, settings)
        policy = cls(
            default_context=read.get("default_context", default(cls, "default_context"),
                                     positive_int),
            reserve=read.get("reserve", default(cls, "reserve"), fraction),
            unknown=read.choice("unknown", default(cls, "unknown"), UNKNOWN_CHOICES),
        )
        read.finish()
        return policy

    def decide(
        self, request: RouteRequest, model: ModelInfo | None, routes: Mapping[str, RouteState]
    ) -> RouteDecision:
        """The pool if a node fits, else sharding if the rpc-servers fit together, else 503."""
        context = request.context_length or self.default_context
        need = need_for(model, context, self.reserve) if model else None
        if need is None:
            numbers = {"context": context, "source": model.source if model else None}
            return unknown_size(self.name, self.unknown, request.model, "file size", routes,
                                numbers)
        numbers = {**need.as_numbers(), "source": model.source if model else None}
        head = f"{request.model} needs {need.describe(self.reserve)}"

        nodes = _pool_nodes(routes.get(POOL), request.model, need.total)
        numbers["pool_nodes"] = {n.backend.backend.id: n.as_numbers() for n in nodes}
        fitting = [n for n in nodes if n.fits]
        if fitting:
            best = max(fitting, key=lambda n: (n.loaded, n.free or 0))
            # Let the pool balance when every node that has the model can take it.
            backend = None if len(fitting) == len(nodes) else best.backend.backend.id
            where = (f"it is loaded on {best.label}" if best.loaded else
                     f"{best.label} has {format_bytes(best.free)} free{best.gpu_note()}")
            count = f" ({len(fitting)} of {len(nodes)} nodes fit)" if len(nodes) > 1 else ""
            reason = f"{head}; {where}{count}: the pool route"
            return decided(POOL, self.name, reason, routes, numbers, backend=backend)

        pool_text = _pool_summary(nodes, routes.get(POOL), request.model)
        shards = _sharding(routes.get(SHARDING), request.model)
        numbers.update(shards.as_numbers())
        if shards.fits(need.total):
            reason = f"{head}; {pool_text}, {shards.describe()}: the sharding route"
            return decided(SHARDING, self.name, reason, routes, numbers)
        shard_text = shards.describe() if shards.state else route_down(routes, SHARDING)
        msg = f"{head}; {pool_text}, and {shard_text}: nothing can hold it"
        raise NoRouteAvailable(msg, numbers=numbers)


@attrs.frozen
class NodeFit:
    """One healthy pool node that has the model, and whether the model fits on it now."""

    backend: BackendState
    loaded: bool
    free: int | None
    fits: bool

    @property
    def label(self) -> str:
        return f"node {self.backend.backend.id}"

    def gpu_note(self) -> str:
        """How its free memory was found, when loaded models hold some of it on the GPU."""
        used, total = self.backend.vram_used, self.backend.memory_total
        if not used or total is None:
            return ""
        return (f" of {format_bytes(total)} declared, after the {format_bytes(used)} its loaded "
                "models hold on the GPU")

    def as_numbers(self) -> dict[str, Any]:
        return {"free_bytes": self.free, "total_bytes": self.backend.memory_total,
                "vram_used_bytes": self.backend.vram_used, "loaded": self.loaded,
                "fits": self.fits}


def _pool_nodes(state: RouteState | None, model: str, need: int) -> list[NodeFit]:
    nodes = []
    for b in state.healthy if state else ():
        if not listed(model, b.models):
            continue
        loaded = listed(model, b.loaded)
        fits = loaded or (b.memory_free is not None and b.memory_free >= need)
        nodes.append(NodeFit(b, loaded, b.memory_free, fits))
    return nodes


def _pool_summary(nodes: list[NodeFit], state: RouteState | None, model: str) -> str:
    if state is None:
        return "there is no pool route"
    if not state.healthy:
        return f"no pool node is healthy (0 of {len(state.backends)})"
    if not nodes:
        return f"none of the {len(state.healthy)} healthy pool nodes has {model}"
    known = [n for n in nodes if n.free is not None]
    if not known:
        # Ollama says what its loaded models hold on the GPU, never how much GPU it has
        using = [f"{format_bytes(n.backend.vram_used)} on {n.label}" for n in nodes
                 if n.backend.vram_used]
        held = (f"; they report only what loaded models hold on the GPU: {', '.join(using)}"
                if using else "")
        return (f"the {len(nodes)} pool nodes with {model} declare no memory "
                f"(declare each node's memory in the pool's settings{held})")
    best = max(known, key=lambda n: n.free or 0)
    return f"the most free memory on a pool node is {format_bytes(best.free)} ({best.label})"


@attrs.frozen
class ShardFit:
    """The sharding route's healthy rpc-servers and the memory they report together."""

    state: RouteState | None
    free: int
    reporting: int
    loaded: bool

    def fits(self, need: int) -> bool:
        return self.state is not None and bool(self.state.healthy) and (
            self.loaded or (self.reporting > 0 and self.free >= need))

    def describe(self) -> str:
        if self.loaded:
            return "the sharding route has it loaded"
        healthy = len(self.state.healthy) if self.state else 0
        if not healthy:
            total = len(self.state.backends) if self.state else 0
            detail = f" ({self.state.detail})" if self.state and self.state.detail else ""
            if not total:
                return f"the sharding route has no rpc-servers{detail}"
            return f"no rpc-server is healthy (0 of {total}){detail}"
        free = format_bytes(self.free)
        text = (f"the {healthy} healthy rpc-servers have {free} free together" if healthy > 1
                else f"the one healthy rpc-server has {free} free")
        if self.reporting < healthy:
            text += f" ({healthy - self.reporting} of them report no memory)"
        # llama.cpp's device names, when every healthy rpc-server's are known
        servers = self.state.healthy if self.state else ()
        if servers and all(b.devices for b in servers):
            text += f" on {', '.join(d for b in servers for d in b.devices)}"
        return text

    def as_numbers(self) -> dict[str, Any]:
        healthy = len(self.state.healthy) if self.state else 0
        return {"sharding_free_bytes": self.free, "sharding_backends": healthy,
                "sharding_reporting": self.reporting, "sharding_loaded": self.loaded}


def _sharding(state: RouteState | None, model: str) -> ShardFit:
    healthy = state.healthy if state else ()
    known = [b.memory_free for b in healthy if b.memory_free is not None]
    loaded = any(listed(model, b.loaded) for b in healthy)
    return ShardFit(state, sum(known), len(known), loaded)
