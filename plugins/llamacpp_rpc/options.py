"""The settings coordinators run with, read once from the config, and where their files go."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import platformdirs

from sollol.core.names import canonical_model
from sollol.core.units import parse_bytes
from sollol.models import ModelInfo

from .plan import needed_bytes

MAX_PER_MODEL = 256
"""Most models whose start counts and unservable reports are kept (the oldest go first)."""


@attrs.frozen
class Options:
    """The settings the scheduler and the supervisor run with (from the config)."""

    mode: str
    idle_timeout: float
    max_coordinators: int
    startup_timeout: float
    wait_timeout: float
    ctx_size: int
    extra_args: tuple[str, ...]
    state_dir: Path
    verbose_log: bool = False
    placement: str = "fewest"
    when_busy: str = "evict"
    queue_size: int = 64
    """Requests that may wait for busy rpc-servers at once; more get 429 at once."""
    local_memory: int = 0
    """Bytes of the gateway machine's memory its coordinators may keep layers in."""
    link_timeout: float = 0.0
    """Seconds without an answer on a link to an rpc-server before the kernel drops it (0: off)."""
    parallel: int = 0
    """Slots per coordinator (llama-server --parallel): requests it runs at once (0: its own
    choice, and the route sends it every request at once)."""
    drafts: dict[str, str] = attrs.field(factory=dict)
    """Sharded model (canonical name) -> its draft model (a name or a GGUF path)."""
    draft_max: int = 8
    """Most tokens a draft proposes per verification pass."""
    fill_caches: bool = False
    """Fill the rpc-servers' tensor caches from here, in parallel, before a coordinator loads."""
    load_relay: bool = False
    """Put a write-behind relay between each coordinator and each of its rpc-servers."""

    def draft_for(self, model: str) -> str | None:
        """The draft model configured for `model` (any spelling of its name), or None."""
        key = canonical_model(model)
        return next((d for m, d in self.drafts.items() if canonical_model(m) == key), None)

    @property
    def embeds(self) -> bool:
        """Whether coordinators start with `--embeddings` (in rpc_coordinator_args)."""
        return any(a in ("--embedding", "--embeddings") for a in self.extra_args)

    def split_local(self, size: int, info: ModelInfo | None) -> tuple[int, int]:
        """(bytes the rpc-servers must hold, layers kept on the gateway machine): whole layers
        fit into `local_memory` stay here (llama-server's own memory), the rest is sharded."""
        kv = info.kv_bytes_per_token if info else None
        needed = needed_bytes(size, kv, self.ctx_size * max(1, self.parallel))  # a context per slot
        layers = info.layer_count if info else None
        if not self.local_memory or not layers:
            return needed, 0
        per_layer = needed / (layers + 1)  # the output layer counts as one
        local = min(layers, int(self.local_memory // per_layer))
        return needed - int(local * per_layer), local


def state_dir(config: Mapping[str, Any] | Any) -> Path:
    """Where coordinator logs, pid files and reports live."""
    configured = config.get("rpc_state_dir")
    if configured:
        return Path(configured).expanduser()
    return Path(platformdirs.user_state_dir("sollol")) / "sharding"


def options_from(config: Any) -> Options:
    return Options(
        mode=config["rpc_coordinator_mode"], idle_timeout=config["rpc_idle_timeout"],
        max_coordinators=config["rpc_max_coordinators"],
        startup_timeout=config["rpc_startup_timeout"], wait_timeout=config["rpc_wait_timeout"],
        queue_size=config["rpc_queue_size"],
        ctx_size=config["rpc_ctx_size"], extra_args=tuple(config["rpc_coordinator_args"]),
        state_dir=state_dir(config), verbose_log=config["rpc_verbose_log"],
        placement=config["rpc_placement"], when_busy=config["rpc_when_busy"],
        local_memory=parse_bytes(config["rpc_local_memory"]),
        link_timeout=config["rpc_link_timeout"], parallel=config["rpc_parallel"],
        drafts=dict(config["rpc_draft_models"]), draft_max=config["rpc_draft_max"],
        fill_caches=config["rpc_fill_caches"], load_relay=config["rpc_load_relay"],
    )


def slug(model: str) -> str:
    """A file-name-safe, collision-free name for a model, the same for every spelling of it
    (one log per model)."""
    model = canonical_model(model)
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_.")[:60] or "model"
    return f"{text}-{hashlib.sha256(model.encode()).hexdigest()[:8]}"


def trim(table: dict[str, Any]) -> None:
    """Drop the oldest entries of a per-model table past MAX_PER_MODEL (dicts keep order)."""
    while len(table) > MAX_PER_MODEL:
        del table[next(iter(table))]
