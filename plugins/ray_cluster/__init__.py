"""SOLLOL plugin `ray`: the gateway runs its rpc-servers (and pool models) as Ray actors.

With `ray_address` set, the gateway joins the Ray cluster as a driver, starts an rpc-server
actor on every Ray node (or per GPU) and registers each as a member; members follow the Ray
nodes. Ray itself is optional (`pip install 'sollol[ray]'`) and imported only when used.
See docs/ray.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import click

from sollol.hookspecs import hookimpl
from sollol.models import Backend, GatewayEndpoint

from .settings import SETTINGS, RaySettings

if TYPE_CHECKING:
    from sollol.config import Config, Setting
    from sollol.core.runtime import ClusterRuntime


@hookimpl
def sollol_register_settings(register: Callable[[Setting], None]) -> None:
    for setting in SETTINGS:
        register(setting)


@hookimpl
def sollol_gateway_endpoints(register: Callable[[GatewayEndpoint], None],
                             cluster: ClusterRuntime) -> None:
    from . import running
    from .endpoints import endpoints
    from .service import RayMembers

    settings = RaySettings.from_config(cluster.config)
    service = None
    if settings.address:
        service = RayMembers(cluster, settings)
        service.start()  # PluginError naming the install command when Ray is missing
        running.register(service)
    for endpoint in endpoints(lambda: running.of_cluster(cluster)):
        register(endpoint)


@hookimpl
async def sollol_shutdown(cluster: ClusterRuntime) -> None:
    from . import running

    await running.SERVICES.stop(cluster)


@hookimpl
def sollol_discover_backends(config: Config) -> Iterable[Backend] | None:
    from . import running

    return running.SERVICES.backends(config)


@hookimpl
def sollol_register_commands(cli: click.Group) -> None:
    from .cli import ray

    cli.add_command(ray)
