"""Old module paths from before the layered tree (0.1 and plugin API 2.x) keep importing.

`import sollol.cluster` still works: it is answered with the module's new home
(`sollol.core.runtime`) and a DeprecationWarning naming it. Nothing in SOLLOL itself imports an
old path (tests/project/test_layers.py checks); this only keeps third-party code working.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType

MOVED = {
    "sollol.cluster": "sollol.core.runtime",
    "sollol.router": "sollol.core.router",
    "sollol.placement": "sollol.core.placement",
    "sollol.membership": "sollol.core.membership",
    "sollol.aliases": "sollol.core.aliases",
    "sollol.names": "sollol.core.names",
    "sollol.capabilities": "sollol.core.capabilities",
    "sollol.events": "sollol.core.events",
    "sollol.plugins": "sollol.core.plugin_manager",
    "sollol.defaults": "sollol.core.defaults",
    "sollol.gguf_info": "sollol.core.gguf_info",
    "sollol.units": "sollol.core.units",
    "sollol.processes": "sollol.core.processes",
    "sollol.secret": "sollol.core.secret",
    "sollol.access": "sollol.core.access",
    "sollol.dispatch": "sollol.forwarding.dispatch",
    "sollol.calls": "sollol.forwarding.calls",
    "sollol.reply": "sollol.forwarding.reply",
    "sollol.upstream": "sollol.forwarding.upstream",
    "sollol.gateway.validate": "sollol.forwarding.validate",
    "sollol.client": "sollol.client.facade",
    "sollol.transport": "sollol.client.transport",
    "sollol.tasks": "sollol.client.tasks",
    "sollol.streaming": "sollol.client.streaming",
    "sollol.fanout": "sollol.client.fanout",
    "sollol.aggregate": "sollol.client.aggregate",
    "sollol.loop_thread": "sollol.client.loop_thread",
    "sollol.batch": "sollol.cli.batch_job",
    "sollol.batch_io": "sollol.cli.batch_io",
    "sollol.progress": "sollol.cli.progress",
    "sollol.doctor": "sollol.cli.checks",
    "sollol.service": "sollol.cli.gateway_unit",
    "sollol.systemd": "sollol.cli.systemd",
    "sollol.cli.admin": "sollol.cli.gateway_client",
    "sollol.cli.models": "sollol.cli.model_tools",
    "sollol.gateway.routes": "sollol.gateway.route_table",
    "sollol.gateway.admin": "sollol.gateway.admin_api",
    "sollol.gateway.manage": "sollol.gateway.model_management",
    "sollol.dialects.errors": "sollol.dialects.error_shapes",
    "sollol.local.cluster": "sollol.local.servers",
    "sollol.local.models": "sollol.local.model_set",
    "sollol.local.run": "sollol.local.serve",
}
"""Old dotted module path -> where the module lives now."""


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module path and hands back the module at its new one."""

    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; import it from there",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        """The module is the new one, already executed."""


def install() -> None:
    """Answer old paths last, after every real module (idempotent)."""
    if not any(isinstance(finder, MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(MovedModules())
