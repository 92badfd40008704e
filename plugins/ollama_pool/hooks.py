"""The pool plugin's hook implementations (re-exported by the package, which pluggy registers)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import click

from sollol.hookspecs import hookimpl
from sollol.models import Backend, BackendKind, HealthReport

from .node_discovery import KINDS, OLLAMA, OPENAI
from .pool_settings import SETTINGS
from .resolve import register_store_commands, register_store_settings

if TYPE_CHECKING:
    from sollol.config import Config, Setting
    from sollol.core.runtime import ClusterRuntime
    from sollol.routes import RouteProvider


@hookimpl
def sollol_register_settings(register: Callable[[Setting], None]) -> None:
    for setting in SETTINGS:
        register(setting)
    register_store_settings(register)


@hookimpl
def sollol_register_backend_kinds(register: Callable[[BackendKind], None]) -> None:
    register(BackendKind(OLLAMA, api="ollama", description="an Ollama server (native API)"))
    register(BackendKind(OPENAI, api="openai",
                         description="an OpenAI-compatible server (llama-server, vLLM, LM Studio)"))


@hookimpl
def sollol_discover_backends(config: Config) -> Iterable[Backend] | None:
    from .node_discovery import discover

    return discover(config)


@hookimpl
def sollol_check_health(backend: Backend, timeout: float) -> HealthReport | None:
    if backend.kind not in KINDS:
        return None
    from .node_probe import check

    return check(backend, timeout)


@hookimpl
def sollol_register_routes(
    register: Callable[[RouteProvider], None], cluster: ClusterRuntime
) -> None:
    from .pool_route import PoolRoute

    register(PoolRoute(cluster))


@hookimpl
def sollol_register_commands(cli: click.Group) -> None:
    from .pool_commands import nodes, pull

    cli.add_command(nodes)
    cli.add_command(pull)
    register_store_commands(cli)
