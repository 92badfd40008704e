"""SOLLOL plugin: model sharding with llama.cpp's `llama-server --rpc` over `ggml-rpc-server`s.

Registered only through the `sollol` entry point `llamacpp_rpc`; it uses the core's public API.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import click

from sollol.hookspecs import hookimpl
from sollol.models import Backend, BackendKind, HealthReport, ShardOffer, ShardPlacement

from .rpc_discovery import KIND
from .rpc_settings import SETTINGS

if TYPE_CHECKING:
    from sollol.config import Config, Setting
    from sollol.core.runtime import ClusterRuntime
    from sollol.routes import RouteProvider


@hookimpl
def sollol_register_settings(register: Callable[[Setting], None]) -> None:
    for setting in SETTINGS:
        register(setting)


@hookimpl
def sollol_register_backend_kinds(register: Callable[[BackendKind], None]) -> None:
    register(BackendKind(KIND, api="ggml-rpc",
                         description="llama.cpp ggml-rpc-server (a shard for model sharding)"))


@hookimpl
def sollol_discover_backends(config: Config) -> Iterable[Backend] | None:
    from .rpc_discovery import discover
    from .rpc_settings import backends

    if not config["model_sharding_enabled"] and not backends(config):
        return None  # sharding is off and nothing is configured: don't touch the network
    return discover(config)


@hookimpl
def sollol_check_health(backend: Backend, timeout: float) -> HealthReport | None:
    if backend.kind != KIND:
        return None
    from .health import check

    return check(backend, timeout)


@hookimpl(trylast=True)
def sollol_place_shards(model: str, needed: int, offers: Sequence[ShardOffer],
                        config: Config) -> ShardPlacement:
    """The built-in placement (`rpc_placement`): the fewest rpc-servers that hold the model."""
    from .plan import place

    return place(needed, offers, config["rpc_placement"])


@hookimpl
def sollol_register_routes(
    register: Callable[[RouteProvider], None], cluster: ClusterRuntime
) -> None:
    if not cluster.config["model_sharding_enabled"]:
        return
    from .sharding_route import ShardingRoute

    register(ShardingRoute(cluster))


@hookimpl
def sollol_register_commands(cli: click.Group) -> None:
    from .rpc_commands import rpc, shard

    cli.add_command(shard)
    cli.add_command(rpc)
