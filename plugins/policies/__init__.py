"""SOLLOL plugin: routing policies (size-threshold, memory-fit, pinned) and `sollol route`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import click

from sollol.hookspecs import PolicyFactory, hookimpl
from sollol.routes import Policy

from .caching import CachedPolicy
from .memory_fit import MemoryFit
from .pinned import Pinned
from .size_threshold import SizeThreshold


def size_threshold(settings: Mapping[str, Any]) -> Policy:
    """The `size-threshold` policy from its settings."""
    return CachedPolicy(SizeThreshold.from_settings(settings))


def memory_fit(settings: Mapping[str, Any]) -> Policy:
    """The `memory-fit` policy from its settings."""
    return CachedPolicy(MemoryFit.from_settings(settings))


def pinned(settings: Mapping[str, Any], policies: Callable[[str], Policy]) -> Policy:
    """The `pinned` policy; its fallback is built by name (and cached by its own factory)."""
    return Pinned.from_settings(settings, policies)


@hookimpl
def sollol_register_policies(register: Callable[[str, PolicyFactory], None]) -> None:
    register(SizeThreshold.name, size_threshold)
    register(MemoryFit.name, memory_fit)
    register(Pinned.name, pinned)


@hookimpl
def sollol_register_commands(cli: click.Group) -> None:
    from .command import route_command

    cli.add_command(route_command)
