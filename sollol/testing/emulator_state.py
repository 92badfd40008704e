"""The emulated node's knobs: speed settings, injectable faults and request statistics."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping
from typing import Any, Literal

import attrs

FaultScope = Literal["inference", "all"]
INFERENCE_PATHS = frozenset({"/api/generate", "/api/chat", "/api/embed", "/api/embeddings"})


def _non_negative(_inst: object, attribute: attrs.Attribute, value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


@attrs.frozen
class Speed:
    """How fast the node "generates": tokens/s (0 = instantly) and time to first token."""

    tokens_per_second: float = attrs.field(default=0.0, validator=_non_negative)
    latency: float = attrs.field(default=0.0, validator=_non_negative)
    response_tokens: int = 12
    response_text: str | None = None
    parallel: int = 4
    """Requests served at once (Ollama's OLLAMA_NUM_PARALLEL); more wait in line. 0: no limit."""


@attrs.frozen
class Faults:
    """Faults to inject. `scope` says which endpoints the HTTP faults hit.

    refuse: the listener is closed (connections are refused), open connections are cut.
    error_status: answer with this status and an `{"error": ...}` body.
    error_count: only the next N matching requests get `error_status` (None: all of them).
    hang: never answer (until the client gives up or the node stops).
    drop_after: cut the connection after N streamed chunks (non-streamed: after half a body).
    stall_after: after N streamed chunks go silent, connection open, until the client leaves.
    slowdown: multiply latency and per-token time by this factor.
    extra_latency: seconds added before the first token.
    """

    refuse: bool = False
    error_status: int | None = None
    error_count: int | None = None
    hang: bool = False
    drop_after: int | None = None
    stall_after: int | None = None
    slowdown: float = attrs.field(default=1.0, validator=_non_negative)
    extra_latency: float = attrs.field(default=0.0, validator=_non_negative)
    scope: FaultScope = "inference"

    def hits(self, path: str) -> bool:
        return self.scope == "all" or path in INFERENCE_PATHS

    @classmethod
    def from_json(cls, data: Mapping[str, Any], base: Faults | None = None) -> Faults:
        """Faults from a JSON object; unknown keys or bad values raise ValueError."""
        known = {a.name for a in attrs.fields(cls)}
        unknown = set(data) - known - {"refuse_seconds", "reset"}
        if unknown:
            raise ValueError(f"unknown fault field(s): {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(sorted(known | {'refuse_seconds', 'reset'}))}")
        start = cls() if data.get("reset") or base is None else base
        changes = {k: v for k, v in data.items() if k in known}
        types = {"refuse": bool, "hang": bool, "error_status": (int, type(None)),
                 "error_count": (int, type(None)), "drop_after": (int, type(None)),
                 "stall_after": (int, type(None)),
                 "slowdown": (int, float), "extra_latency": (int, float), "scope": str}
        for key, value in changes.items():
            if not isinstance(value, types[key]) or (isinstance(value, bool)
                                                     and types[key] is not bool):
                raise ValueError(f"fault field {key!r}: bad value {value!r}")
        if changes.get("scope", "inference") not in ("inference", "all"):
            raise ValueError("fault field 'scope': expected 'inference' or 'all'")
        status = changes.get("error_status")
        if status is not None and not 400 <= status <= 599:
            raise ValueError("fault field 'error_status': expected an HTTP status 400-599")
        return attrs.evolve(start, **changes)


@attrs.define
class Stats:
    """What the node has seen: request counts per path, concurrency, tokens, injected faults."""

    requests: Counter[str] = attrs.field(factory=Counter)
    models: Counter[str] = attrs.field(factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    tokens: int = 0
    loads: int = 0
    injected: Counter[str] = attrs.field(factory=Counter)
    recent: deque[dict[str, Any]] = attrs.field(factory=lambda: deque(maxlen=20))
    pushed: list[str] = attrs.field(factory=list)

    def enter(self, path: str) -> None:
        self.requests[path] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        self.in_flight -= 1

    def as_dict(self) -> dict[str, Any]:
        return {"requests": dict(self.requests), "total": sum(self.requests.values()),
                "models": dict(self.models), "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight, "tokens": self.tokens, "loads": self.loads,
                "injected": dict(self.injected), "recent": list(self.recent),
                "pushed": list(self.pushed)}
