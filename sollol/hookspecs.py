"""The contract between SOLLOL's core and its plugins: every hook a plugin may implement.

Hooks may gain arguments later; pluggy passes a hook implementation only the arguments it names
("opt-in arguments"), so a plugin written today keeps working.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import click
import pluggy

from sollol.models import (
    Backend,
    BackendKind,
    GatewayEndpoint,
    HealthReport,
    ResolvedModel,
    RouteEvent,
    ShardOffer,
    ShardPlacement,
)

if TYPE_CHECKING:
    from sollol.config import Config, Setting
    from sollol.core.runtime import ClusterRuntime
    from sollol.routes import Policy, RouteProvider

PolicyFactory = Callable[[dict[str, Any]], "Policy"]
"""Builds a policy from its settings (`policy_settings[name]` in the config)."""

hookspec = pluggy.HookspecMarker("sollol")
hookimpl = pluggy.HookimplMarker("sollol")


@hookspec
def sollol_register_settings(register: Callable[[Setting], None]) -> None:
    """Declare config keys a plugin reads. Called when the config is validated.

    Each key can then be set in the config file and as `SOLLOL_<KEY>`; unknown keys are errors.
    """


@hookspec
def sollol_register_backend_kinds(register: Callable[[BackendKind], None]) -> None:
    """Declare the backend kinds a plugin can talk to. A kind registered twice is an error."""


@hookspec
def sollol_discover_backends(config: Config) -> Iterable[Backend] | None:
    """Return the backends a plugin finds (from config, env or an explicit scan).

    Called at cluster start and on refresh; the results of all plugins are merged by backend id.
    Never scan a network the user did not name.
    """


@hookspec(firstresult=True)
def sollol_check_health(backend: Backend, timeout: float) -> HealthReport | None:
    """Probe one backend and report its health; return None when the kind is not yours.

    firstresult: the first non-None report wins. The core's default (trylast) only tries a TCP
    connect. Called from a worker thread, never while a lock is held.
    """


@hookspec(firstresult=True)
def sollol_resolve_gguf(model: str, config: Config) -> ResolvedModel | None:
    """Find the GGUF file for a model name; return None for "not mine".

    firstresult: the first non-None result wins. The core's default (trylast) finds files only
    in the `gguf_dirs` folders. `model` may come as written or canonical ("llama3:latest").
    """


@hookspec
def sollol_gguf_names(config: Config) -> Iterable[str] | None:
    """Names of the models whose GGUF files this plugin's `sollol_resolve_gguf` can find.

    Used for listings and "did you mean" suggestions; the names of every plugin are merged.
    """


@hookspec(firstresult=True)
def sollol_place_shards(
    model: str, needed: int, offers: Sequence[ShardOffer], config: Config,
) -> ShardPlacement | None:
    """Choose the rpc-servers (and the share of each device) a sharded model is loaded on.

    firstresult: the first non-None placement wins; the llama.cpp RPC plugin's built-in
    strategy is `trylast`. `needed` is bytes (weights plus KV cache); `offers` are the
    rpc-servers free right now. Return a placement with no addresses when nothing fits.
    """


@hookspec
def sollol_register_policies(register: Callable[[str, PolicyFactory], None]) -> None:
    """Register routing policies by name: `register(name, factory)`; factory(settings) -> Policy.

    Config's `routing_policy` chooses one by name; a name registered twice is an error.
    A factory that also takes a `policies` keyword receives `policies(name) -> Policy`, which
    builds another registered policy from its own settings (for a policy that falls through).
    """


@hookspec
def sollol_register_routes(
    register: Callable[[RouteProvider], None], cluster: ClusterRuntime
) -> None:
    """Register route providers (such as "pool" or "sharding") for a starting cluster.

    Called once per cluster start. A route name registered twice is an error.
    """


@hookspec
def sollol_register_commands(cli: click.Group) -> None:
    """Add click commands or groups to the `sollol` CLI. Called once, in `main()`."""


@hookspec
def sollol_gateway_endpoints(
    register: Callable[[GatewayEndpoint], None], cluster: ClusterRuntime
) -> None:
    """Register HTTP endpoints the gateway serves for this plugin (paths under `/sollol/`).

    Called once per gateway start, inside its event loop, after the cluster started. A path
    that another plugin or the gateway itself serves is an error.
    """


@hookspec
def sollol_startup(cluster: ClusterRuntime) -> Awaitable[None] | None:
    """The cluster (gateway or embedded) has started its routes; start background work here.

    Called inside the running event loop; an awaitable result is awaited.
    """


@hookspec
def sollol_shutdown(cluster: ClusterRuntime) -> Awaitable[None] | None:
    """The cluster is stopping; stop background work. An awaitable result is awaited."""


@hookspec
def sollol_request_routed(event: RouteEvent, cluster: ClusterRuntime) -> None:
    """Called after each routed request finishes (success or not), for metrics and dashboards.

    `cluster` is the one that routed it (a process may run several). Must be quick and must
    not raise: it runs on the request path.
    """
