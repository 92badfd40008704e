"""The interfaces route providers and routing policies implement.

A *route* is one way of serving requests ("pool": whole models on many nodes; "sharding": one
model spread over rpc-servers). Plugins provide routes through `sollol_register_routes`; the
router picks one per request; the route then hands out a `Lease` on a concrete upstream server.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs

from sollol.models import Api, Backend, ModelInfo, RouteDecision, RouteRequest, RouteState

if TYPE_CHECKING:
    from sollol.config import Config


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

    # Optional: `async def placement(self, request: RouteRequest) -> Placement` (core.placement)
    # says whether this route holds the model and can do what the request needs; without it
    # the cluster judges the route by its backends' model lists (see docs/policies.md).


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
