"""Building the plugin manager and collecting what plugins register by name."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Collection, Iterator
from typing import Any

import attrs
import pluggy

from sollol import hookspecs
from sollol.core import defaults
from sollol.errors import ConfigError, DuplicateNameError, PluginError

ENTRY_POINT_GROUP = "sollol"
CORE_NAME = "sollol.defaults"


@attrs.frozen
class PluginInfo:
    """A plugin as `sollol plugins` shows it."""

    name: str
    entry_point: str
    distribution: str | None
    version: str | None
    status: str  # "enabled", "blocked" or "not allowed"


class SollolPluginManager(pluggy.PluginManager):
    """A pluggy manager that also remembers every plugin it saw and why it (did not) load."""

    def __init__(self) -> None:
        super().__init__("sollol")
        self.plugin_info: dict[str, PluginInfo] = {}


def get_plugin_manager(
    allow: Collection[str] | None = None,
    block: Collection[str] = (),
    *,
    load_entry_points: bool = True,
) -> SollolPluginManager:
    """A fresh manager with the specs, the core defaults and the allowed entry-point plugins.

    `allow` None means every installed plugin; names in `block` are never loaded.
    """
    pm = SollolPluginManager()
    pm.add_hookspecs(hookspecs)
    pm.register(defaults, name=CORE_NAME)
    if load_entry_points:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            _load(pm, ep, allow, block)
        unknown = sorted(set(allow or ()) - set(pm.plugin_info))
        if unknown:  # a typo in an allow-list would otherwise silently load nothing
            installed = ", ".join(sorted(pm.plugin_info)) or "none"
            raise ConfigError("plugins", unknown, f"names of installed plugins ({installed})")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = getattr(exc, "plugin_name", None) or pm.get_name(exc.plugin) or "?"
        info = pm.plugin_info.get(name)
        where = f" (entry point {info.entry_point})" if info else ""
        msg = f"plugin {name!r}{where} implements an unknown hook: {exc}"
        raise PluginError(msg) from None
    return pm


def _load(
    pm: SollolPluginManager,
    ep: importlib.metadata.EntryPoint,
    allow: Collection[str] | None,
    block: Collection[str],
) -> None:
    dist = ep.dist
    status = "enabled"
    if ep.name in block:
        status = "blocked"
    elif allow is not None and ep.name not in allow:
        status = "not allowed"
    info = PluginInfo(
        name=ep.name,
        entry_point=f"{ep.name} = {ep.value}",
        distribution=dist.name if dist else None,
        version=dist.version if dist else None,
        status=status,
    )
    first = pm.plugin_info.get(ep.name)
    if first is not None and status == "enabled":
        raise PluginError(f"plugin name {ep.name!r} is used by two entry points: "
                          f"{_where(first)} and {_where(info)}; uninstall or rename one")
    pm.plugin_info[ep.name] = info
    if status == "blocked":
        pm.set_blocked(ep.name)
    if status != "enabled":
        return
    try:
        plugin = ep.load()
    except Exception as exc:
        msg = f"plugin {ep.name!r} (entry point {ep.value}) failed to import: {exc}"
        raise PluginError(msg) from None
    other = pm.get_name(plugin)
    if other is not None:  # pluggy refuses one object under two names, with a bare ValueError
        first = pm.plugin_info.get(other)
        msg = (f"plugin {ep.name!r} (entry point {ep.value}) loads the same object as plugin "
               f"{other!r}" + (f" ({_where(first)})" if first else ""))
        raise PluginError(msg)
    try:
        pm.register(plugin, name=ep.name)
    except pluggy.PluginValidationError as exc:
        msg = f"plugin {ep.name!r} (entry point {ep.value}) breaks the hook contract: {exc}"
        raise PluginError(msg) from None


def _where(info: PluginInfo) -> str:
    """An entry point and the distribution that declares it, for error messages."""
    return f"`{info.entry_point}` from {info.distribution or 'an unknown distribution'}"


def call_each(pm: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> Iterator[tuple[str, Any]]:
    """Call every implementation of a hook separately, yielding (plugin name, result).

    Used where we must know *which* plugin produced a result (to name both sides of a clash).
    Each implementation gets only the arguments it asks for, as pluggy would pass them.
    """
    caller = getattr(pm.hook, hook_name)
    for impl in reversed(caller.get_hookimpls()):
        args = {name: kwargs[name] for name in impl.argnames}
        yield impl.plugin_name, impl.function(**args)


def collect_named(
    pm: pluggy.PluginManager, hook_name: str, what: str, *, key: Callable[[Any], str] | None = None,
    **kwargs: Any,
) -> dict[str, tuple[Any, str]]:
    """Run a `register`-style hook; return {name: (item, plugin)}, failing on duplicates.

    `register` receives either (name, item) or one item whose name is `key(item)` (default:
    `item.name`). Extra keyword arguments are passed to implementations that ask for them.
    """
    found: dict[str, tuple[Any, str]] = {}

    def registrar(plugin: str) -> Callable[..., None]:
        def register(*args: Any) -> None:
            name, item = args if len(args) == 2 else ((key or _name)(args[0]), args[0])
            if name in found:
                raise DuplicateNameError(what, name, found[name][1], plugin)
            found[name] = (item, plugin)

        return register

    for impl in reversed(getattr(pm.hook, hook_name).get_hookimpls()):
        register = registrar(impl.plugin_name)
        impl.function(**{n: register if n == "register" else kwargs[n] for n in impl.argnames})
    return found


def _name(item: Any) -> str:
    return item.name


def implemented_hooks(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    """Names of the hooks a registered plugin implements."""
    return sorted({caller.name for caller in pm.get_hookcallers(plugin) or ()})
