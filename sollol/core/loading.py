"""Loading the plugin manager and the full config, without the runtime.

Kept apart from `sollol.core.runtime` (which imports asyncio, the router and the membership):
commands that only read or write the config (`sollol config show|set`) load this alone.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from typing import Any

from sollol.config import Config, load_config, plugin_lists
from sollol.core.plugin_manager import SollolPluginManager, collect_named, get_plugin_manager

__all__ = ["load"]


def load(
    *, path: os.PathLike[str] | str | None = None, overrides: dict[str, Any] | None = None,
    env: dict[str, str] | None = None, register: Collection[object] = (),
) -> tuple[Config, SollolPluginManager]:
    """Load the plugin manager (honouring allow/block lists) and the full, validated config.

    `register`: plugin objects to add beside the entry points (tests' inline plugins); their
    config keys count like any plugin's.
    """
    from pathlib import Path

    file = Path(path) if path else None
    allow, block = plugin_lists(path=file, env=env, overrides=overrides)
    pm = get_plugin_manager(allow, block)
    for plugin in register:
        pm.register(plugin)
    settings = collect_named(pm, "sollol_register_settings", "config key")
    config = load_config([s for s, _ in settings.values()], path=file, env=env,
                         overrides=overrides)
    return config, pm
