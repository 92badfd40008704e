"""One pool node's live state: health, ejection, load, models and measured speed."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import attrs

from sollol.core.names import is_path, spellings, stem
from sollol.models import Backend, BackendState, HealthReport
from sollol.routes import Outcome

from .pool_settings import PoolSettings

if TYPE_CHECKING:
    from sollol.core.live_memory import LiveMemory

SPEED_WEIGHT = 0.3
"""Weight of the newest sample in the moving averages (about the last 5 requests count)."""


@functools.lru_cache(maxsize=4096)  # asked on every scheduling decision
def model_names(name: str) -> frozenset[str]:
    """The spellings that mean one model: "llama3", "llama3:latest", "library/llama3"..."""
    return spellings(name)


def all_names(names: Iterable[str]) -> frozenset[str]:
    """Every spelling of every name; a path-named model (llama-server started without
    `--alias`) is also known by its file name without `.gguf`."""
    out: set[str] = set()
    for name in names:
        out |= model_names(name)
        if is_path(name):
            out |= model_names(stem(name))
    return frozenset(out)


def _running(report: HealthReport | None) -> list[dict[str, Any]]:
    """Loaded models with the memory each holds (Ollama's `/api/ps` `size_vram`)."""
    if report is None:
        return []
    entries = report.extra.get("ps")
    if isinstance(entries, list):
        return [{"name": str(e.get("name") or e.get("model")), "size": e.get("size"),
                 "size_vram": e.get("size_vram")} for e in entries if isinstance(e, dict)]
    meta = report.extra.get("meta") or {}  # OpenAI-compatible: what /v1/models says of each
    return [{"name": name, "size": (meta.get(name) or {}).get("size"), "size_vram": None}
            for name in sorted(report.loaded_models)]


def _ewma(old: float | None, new: float) -> float:
    return new if old is None else old + SPEED_WEIGHT * (new - old)


@attrs.define(eq=False)
class Node:
    """A pool node as the balancer sees it. Only touched on the event loop's thread."""

    backend: Backend
    limit: int
    memory_total: int | None = None
    api: str = ""
    """The dialect it speaks: its kind's `api`, or what a probe detected."""
    healthy: bool = False
    probed: bool = False
    detail: str = "not probed yet"
    report: HealthReport | None = None
    models: frozenset[str] = frozenset()
    loaded: frozenset[str] = frozenset()
    in_flight: int = 0
    failures: int = 0
    probe_failures: int = 0
    ejections: int = 0
    ejected_until: float = 0.0
    readmit_pending: bool = False
    next_probe: float = 0.0
    sec_per_token: float | None = None
    request_seconds: float | None = None
    served: int = 0
    failed: int = 0
    last_pick: int = 0
    """Sequence number of the last request placed here (ties go to the least recent)."""
    warm_cap: int | None = None
    """While a readmitted node warms up: how many requests it may serve at once."""
    warm_until: float = 0.0
    server: str = ""
    up_since: float | None = None
    """Wall-clock time of the first good probe since the node was last down."""
    capabilities: dict[str, frozenset[str]] = attrs.field(factory=dict)
    """Per model spelling ("" for the node's one model), from the probe."""
    lacks: dict[str, frozenset[str]] = attrs.field(factory=dict)
    """Capabilities the node answered it lacks, per model ("" when it serves one model)."""
    live: LiveMemory | None = attrs.field(default=None, repr=False)
    """Memory the node's machine reports itself (a joined worker's heartbeats), by node id."""
    _capabilities_from: object = attrs.field(default=None, init=False, repr=False)
    """The probe's `capabilities` that `capabilities` was spelled out from."""

    def __attrs_post_init__(self) -> None:
        self.api = self.api or self.backend.kind

    @property
    def id(self) -> str:
        return self.backend.id

    @property
    def cap(self) -> int:
        """Requests this node may serve at once now (its limit, less while it warms up)."""
        return self.limit if self.warm_cap is None else min(self.limit, self.warm_cap)

    @property
    def warming(self) -> bool:
        return self.warm_cap is not None

    def begin_warmup(self, now: float, seconds: float) -> None:
        """Slow start after a readmission: one request at a time (it may load the model while
        the others go elsewhere), doubling with each success, full after `seconds` at most."""
        if seconds <= 0 or self.limit <= 1:
            return
        self.warm_cap, self.warm_until = 1, now + seconds

    def _warm_step(self, now: float, success: bool) -> None:
        if self.warm_cap is None:
            return
        if success:
            self.warm_cap *= 2
        if self.warm_cap >= self.limit or now >= self.warm_until:
            self.warm_cap = None

    def ejected(self, now: float) -> bool:
        return now < self.ejected_until

    def available(self, now: float) -> bool:
        return self.healthy and not self.readmit_pending and not self.ejected(now)

    def has_model(self, model: str) -> bool:
        return bool(model_names(model) & self.models)

    def missing(self, model: str, needs: frozenset[str]) -> frozenset[str]:
        """Which of `needs` this node is known not to have for `model`."""
        return self.state_caps().missing(model, needs) if needs else frozenset()

    def state_caps(self) -> BackendState:
        return BackendState(self.backend, healthy=self.healthy, capabilities=self.capabilities,
                            lacks=self.lacks)

    def learn_lack(self, model: str, capability: str) -> None:
        """The node answered it cannot do `capability` for `model`."""
        keys = [""] if self.api == "openai" else sorted(model_names(model))
        for key in keys:
            self.lacks[key] = self.lacks.get(key, frozenset()) | {capability}

    def is_loaded(self, model: str) -> bool:
        return bool(model_names(model) & self.loaded)

    def vram_used(self) -> int | None:
        """GPU memory its loaded models hold (Ollama's `/api/ps` `size_vram`); None when the
        node does not say (llama-server's endpoints report no device memory)."""
        used = self.report.extra.get("vram_used") if self.report else None
        return used if isinstance(used, int) else None

    def memory(self) -> tuple[int | None, int | None]:
        """(total, free): the declared memory (`pool_node_memory`) less what its loaded models
        hold on the GPU; else what its machine last reported (sollol/core/live_memory.py)."""
        if self.memory_total is not None:
            return self.memory_total, max(0, self.memory_total - (self.vram_used() or 0))
        reading = self.live.get(self.id) if self.live is not None else None
        if reading is not None:
            return reading.total, reading.free
        return None, None

    def memory_free(self) -> int | None:
        """Free memory for placement (see `memory`), or None when unknown."""
        return self.memory()[1]

    def apply(self, report: HealthReport, now: float, settings: PoolSettings) -> None:
        """Take a probe's result; a good probe readmits an ejected node, a bad one backs off."""
        self.probed, self.detail = True, report.detail
        if report.healthy:
            if not self.healthy or self.up_since is None:
                self.up_since = time.time()  # serving since (listings' modified_at)
                self.lacks = {}  # back from down: maybe restarted with other options
            self.report, self.healthy = report, True
            self.api = str(report.extra.get("api") or self.api)
            self.models = all_names(report.models)
            self.loaded = all_names(report.loaded_models)
            self.server = str(report.extra.get("server") or self.server)
            reported = report.extra.get("capabilities")
            if isinstance(reported, dict) and reported is not self._capabilities_from:
                # the prober hands the same dict until it learns anew: spell it out once
                self._capabilities_from = reported
                self.capabilities = {spelling: frozenset(found)
                                     for name, found in reported.items()
                                     for spelling in (model_names(name) if name else [""])}
            if isinstance(reported, dict) and self.lacks:
                # what the node now reports it can do outweighs what it once answered
                self.lacks = {key: gone - self.capabilities.get(key, frozenset())
                              for key, gone in self.lacks.items()}
            self.probe_failures = 0
            if not self.ejected(now):
                self.readmit_pending = False
            self.next_probe = now + settings.health_interval
            self._warm_step(now, success=False)
            slots = report.extra.get("slots")
            if isinstance(slots, int) and slots > 0:
                self.limit = slots  # llama-server says how many requests it serves at once
            return
        self.healthy = False
        self.probe_failures += 1
        pause = settings.health_interval * 2 ** (self.probe_failures - 1)
        self.next_probe = now + min(pause, settings.backoff_max)

    def record(self, outcome: Outcome, now: float, settings: PoolSettings,
               may_eject: bool) -> bool:
        """Account a finished request; return True when it ejected the node."""
        if outcome.ok:
            self.served += 1
            self.failures = 0
            self._warm_step(now, success=True)
            if outcome.seconds:
                self.request_seconds = _ewma(self.request_seconds, outcome.seconds)
                if outcome.tokens:
                    self.sec_per_token = _ewma(self.sec_per_token,
                                               outcome.seconds / outcome.tokens)
            return False
        if outcome.unsupported is not None or not (outcome.connect_failed
                                                   or outcome.status >= 500):
            return False  # a 4xx, a missing feature, a client that left: not the node's fault
        self.failed += 1
        self.failures += 1
        threshold = 1 if outcome.connect_failed else settings.eject_failures
        if self.failures < threshold or not may_eject:
            return False
        if now - self.ejected_until > settings.eject_max_seconds:
            self.ejections = 0  # long healthy since the last ejection: start small again
        seconds = min(settings.eject_seconds * 2 ** self.ejections, settings.eject_max_seconds)
        self.ejections += 1
        self.failures = 0
        self.ejected_until = now + seconds
        self.readmit_pending = True
        self.next_probe = self.ejected_until  # a good probe after the ejection readmits it
        self.detail = f"ejected for {seconds:g}s: {outcome.error or f'HTTP {outcome.status}'}"
        return True

    def state(self, now: float) -> BackendState:
        return BackendState(
            backend=self.backend, healthy=self.available(now), models=self.models,
            loaded=self.loaded, memory_total=self.memory()[0], memory_free=self.memory_free(),
            in_flight=self.in_flight, detail=self.detail, capacity=self.cap,
            capabilities=self.capabilities, lacks=self.lacks, server=self.server,
            vram_used=self.vram_used(),
        )

    def snapshot(self, now: float) -> dict[str, Any]:
        """Plain data for `sollol nodes` and `/sollol/nodes`."""
        ejected = self.ejected(now)
        report = self.report
        # what a node has loaded and how fast it answers are live facts: a node that is down
        # has none (its last healthy report is history, not its state)
        live = report if self.healthy else None
        return {
            "id": self.id, "address": self.backend.address, "kind": self.backend.kind,
            "api": self.api, "source": self.backend.labels.get("source", ""),
            "health": "ejected" if ejected else ("healthy" if self.healthy else
                                                 ("unknown" if not self.probed else "down")),
            "detail": self.detail,
            "ejected_until": time.time() + (self.ejected_until - now) if ejected else None,
            "ejections": self.ejections, "in_flight": self.in_flight, "limit": self.limit,
            "warming": {"cap": self.cap, "until": time.time() + (self.warm_until - now)}
            if self.warm_cap is not None else None,
            "models": sorted(report.models) if report else [],
            "loaded": sorted(live.loaded_models) if live else [],
            "running": _running(live),
            "memory_total": self.memory()[0], "memory_free": self.memory_free(),
            "member": self.backend.labels.get("member"),
            "vram_used": self.vram_used() if live else None,
            "tokens_per_second": 1 / self.sec_per_token if live and self.sec_per_token else None,
            "request_seconds": self.request_seconds, "served": self.served,
            "failed": self.failed, "version": report.version if report else None,
            "probe_latency_s": report.latency_s if report else None,
            "server": self.server, "up_since": self.up_since if live else None,
            "unserved": list(report.extra.get("unserved") or ()) if live else [],
            "capabilities": {name: sorted(found) for name, found in self.capabilities.items()
                             if name == "" or name in (report.models if report else ())},
            "lacks": {name: sorted(found) for name, found in self.lacks.items()},
        }
