"""SOLLOL plugin: machines join the cluster with a token (`sollol join`), over mutual-TLS links.

The gateway side: join tokens, the cluster CA, the `/sollol/cluster/` endpoints, members as
backends, `sollol cluster ...`. See docs/cluster.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import click

from sollol.hookspecs import hookimpl
from sollol.models import Backend, GatewayEndpoint

from .settings import SETTINGS, state_dir

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
    from .lan_gateway import GatewayLan, lan_endpoints
    from .service import JoinService

    folder = state_dir(cluster.config)
    service = JoinService.open(cluster, folder)
    running.register(service)
    service.start()
    for endpoint in endpoints(service):
        register(endpoint)
    # announce the gateway and watch for announcing workers (off on loopback or when
    # cluster_announce is false); started in a thread, never blocking the event loop
    service.lan = GatewayLan.for_config(cluster.config, "")
    if service.lan is not None:  # the CA is made only when it is announced (or first needed)
        service.lan.pin = service.ca.pin
        service.lan.begin()
    for endpoint in lan_endpoints(lambda: service.lan, lambda: list(service.store.members)):
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
    from .cli import cluster
    from .join_command import join
    from .lan_gateway import discovered

    cluster.add_command(discovered)
    cli.add_command(cluster)
    cli.add_command(join)
