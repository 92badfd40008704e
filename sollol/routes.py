"""The interfaces route providers and routing policies implement.

A *route* is one way of serving requests ("pool": whole models on many nodes; "sharding": one
model spread over rpc-servers). Plugins provide routes through `sollol_register_routes`; the
router picks one per request; the route then hands out a `Lease` on a concrete upstream server.
Beside the contract every route keeps (`RouteProvider`), a route may implement `Membership`
(backends that join and leave) and `ModelManagement` (Ollama's pull, push, create, delete and
copy, which the gateway serves through the pool route).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs

from sollol.models import Api, Backend, ModelInfo, RouteDecision, RouteRequest, RouteState

if TYPE_CHECKING:
    from sollol.config import Config

POOL = "pool"
"""Route name for task distribution: whole models on a pool of nodes."""
SHARDING = "sharding"
"""Route name for model sharding: one model over llama.cpp rpc-servers."""


@attrs.frozen
class Outcome:
    """How a leased request ended; routes use it for passive health and speed estimates."""

    ok: bool
    status: int = 200
    error: str | None = None
    connect_failed: bool = False
    tokens: int | None = None
    seconds: float | None = None
    first_byte_sent: bool = False
    unsupported: str | None = None
    """A capability the backend answered it does not have: not a failure of the backend."""


@attrs.define
class Lease:
    """The right to send one request to one upstream server. Always `release()` it, once."""

    route: str
    backend: Backend
    base_url: str
    api: Api
    on_release: Callable[[Outcome], None] | None = None
    released: bool = False
    explain: Callable[[], str | None] | None = None
    """Optional: why the upstream failed, in words, if the route knows (for error messages)."""

    def failure_detail(self) -> str | None:
        """The route's explanation of a failed upstream, or None."""
        return self.explain() if self.explain is not None else None

    def release(self, outcome: Outcome) -> None:
        if self.released:
            return
        self.released = True
        if self.on_release is not None:
            self.on_release(outcome)


@runtime_checkable
class RouteProvider(Protocol):
    """What a plugin implements to serve requests on one route."""

    name: str

    async def start(self) -> None:
        """Start background work (health loops, processes). Called once."""

    async def stop(self) -> None:
        """Stop everything started; must not leave processes behind."""

    def state(self) -> RouteState:
        """The route's current state for routing decisions; no I/O."""

    async def list_models(self) -> list[dict[str, Any]]:
        """Models this route can serve, as Ollama `/api/tags` entries."""

    async def running(self) -> list[dict[str, Any]]:
        """Models loaded right now, as Ollama `/api/ps` entries."""

    async def model_info(self, model: str) -> ModelInfo | None:
        """Size facts for `model` if this route can tell (e.g. from a node's `/api/show`)."""

    async def acquire(
        self, request: RouteRequest, *, backend: str | None = None, exclude: Collection[str] = ()
    ) -> Lease:
        """Pick an upstream for `request` (optionally a given backend), waiting if queued.

        Raises NoRouteAvailable, ModelNotFound or Overloaded.
        """

    def snapshot(self) -> Mapping[str, Any]:
        """The route's state as plain data (JSON-ready), for `sollol nodes` and dashboards."""

    # Optional: `async def placement(self, request: RouteRequest) -> Placement` (below)
    # says whether this route holds the model and can do what the request needs; without it
    # the cluster judges the route by its backends' model lists (see docs/policies.md).


@attrs.frozen
class Placement:
    """One route's answer to "could you serve this request?".

    `holds` is True (the route has the model), False (it does not) or None (it cannot tell
    now, e.g. its nodes are down); `missing` is what the request needs that no backend of the
    route holding the model can do (capability names of `sollol.core.capabilities`).
    """

    route: str
    holds: bool | None
    reason: str
    missing: frozenset[str] = attrs.field(default=frozenset(), converter=frozenset)
    fails_now: str = ""
    """Why a request sent now would fail at once (e.g. every rpc-server is down), or "": the
    request then goes on to the model's fallbacks, and `sollol route` says so."""

    @property
    def able(self) -> bool:
        """The route holds the model and can do what the request needs."""
        return self.holds is True and not self.missing

    @property
    def excluded(self) -> bool:
        """The route certainly cannot serve the request."""
        return self.holds is False or bool(self.missing)

    def as_dict(self) -> dict[str, Any]:
        verdict = ("can serve" if self.able else "cannot tell" if self.holds is None
                   else "cannot serve")
        out: dict[str, Any] = {"verdict": verdict, "why": self.reason}
        if self.missing:
            out["missing"] = sorted(self.missing)
        if self.fails_now:
            out["fails_now"] = self.fails_now
        return out


@runtime_checkable
class Membership(Protocol):
    """Optional for a route: backends that join and leave while it serves.

    The cluster feeds it every discovery result (on `discovery_interval` and on a config
    reload), and the gateway's admin endpoints call `add_backend` / `remove_backend`.
    Removing a backend never cuts a request it is serving.
    """

    kinds: Collection[str]
    """The backend kinds this route serves (discovery results are filtered by them)."""

    async def add_backend(self, address: str) -> Mapping[str, Any]:
        """Add a backend by address (RequestError for a bad one); idempotent."""

    async def remove_backend(self, ident: str) -> Mapping[str, Any]:
        """Remove a backend by id or address (BackendNotFound when unknown)."""

    async def sync_backends(self, backends: Collection[Backend], *,
                            prune: bool) -> Mapping[str, list[str]]:
        """Add newly discovered backends; with `prune`, also remove those no longer found
        (except ones an operator added). Returns {"added": [ids], "removed": [ids]}."""

    def reconfigure(self, config: Config) -> Collection[str]:
        """Take a reloaded config; return the keys now in effect (others need a restart)."""


@runtime_checkable
class ModelManagement(Protocol):
    """Optional for a route: Ollama's model-management calls, fanned out to its nodes.

    The gateway serves `/api/pull`, `/api/push`, `/api/create`, `/api/delete` and `/api/copy`
    through the pool route when it implements this (the bundled pool route does). `nodes`
    names the nodes to act on (ids or addresses; None: every healthy node that can).

    Streamed operations yield Ollama's progress objects, each with a `node` field; the last
    one sums up: `{"status": "success", "nodes": {...}}`, or `{"error": ..., "nodes": {...},
    "http_status": N}` naming the nodes that failed. The first object is taken before any
    byte goes to the client, so an error raised there (NoRouteAvailable, RequestError)
    becomes the HTTP answer. `delete` and `copy` answer `{"status": "success", "nodes":
    {...}}` or a summary with `"error"` and the `"http_status"` the client gets.
    """

    def pull(self, model: str, nodes: Collection[str] | None = None,
             insecure: bool = False) -> AsyncIterator[dict[str, Any]]:
        """Pull `model` onto the nodes: merged progress."""

    def push(self, model: str, nodes: Collection[str] | None = None,
             insecure: bool = False) -> AsyncIterator[dict[str, Any]]:
        """Push `model` from the nodes to its registry: merged progress."""

    def create(self, body: Mapping[str, Any], nodes: Collection[str] | None = None,
               ) -> AsyncIterator[dict[str, Any]]:
        """Create a model from an Ollama `/api/create` body on the nodes: merged progress."""

    async def upload_blobs(self, blobs: Mapping[str, Path],
                           nodes: Collection[str] | None = None) -> dict[str, list[str]]:
        """Send each blob (digest -> file) to the nodes that lack it, before a create names
        it; returns the digests sent per node (BackendError when a node refuses one)."""

    async def delete(self, model: str, nodes: Collection[str] | None = None,
                     ) -> dict[str, Any]:
        """Delete `model` from the nodes: per-node results and a summary."""

    async def copy(self, source: str, destination: str,
                   nodes: Collection[str] | None = None) -> dict[str, Any]:
        """Copy model `source` to `destination` on the nodes: per-node results and a summary."""


@runtime_checkable
class KeepAlive(Protocol):
    """Optional for a route whose backends do not read Ollama's `keep_alive` themselves (the
    pool forwards it to Ollama nodes; a llama-server ignores it): the gateway hands it over.
    Ollama's meaning: how long the model stays loaded after the request."""

    def keep_alive(self, model: str, seconds: float | None) -> None:
        """A request for `model` asks it to stay loaded `seconds` after its last request (0:
        unload once idle; math.inf: never; None: the request said nothing, the route's
        default). Each request sets it, as each request to Ollama does."""

    async def unload(self, model: str) -> bool:
        """Stop serving `model` now (requests in flight finish first); False when it was not
        loaded. Called for a request that only unloads (`keep_alive: 0`, no prompt), which
        never starts anything."""


@runtime_checkable
class Policy(Protocol):
    """Decides which route serves a request when both sharding and distribution are on.

    Pure: no I/O. Raises NoRouteAvailable (with the numbers) when nothing fits.
    """

    name: str

    def decide(
        self,
        request: RouteRequest,
        model: ModelInfo | None,
        routes: Mapping[str, RouteState],
    ) -> RouteDecision: ...
