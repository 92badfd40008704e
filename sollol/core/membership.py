"""Backends joining and leaving a running cluster: discovery on an interval, config reloads.

Routes that implement `sollol.routes.Membership` take part; others keep the backends they
started with. The gateway's admin endpoints (`/sollol/nodes`, `/sollol/rpc`, `/sollol/reload`)
and `sollol run`'s SIGHUP handler call into this module.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sollol.errors import SollolError
from sollol.routes import Membership

if TYPE_CHECKING:
    from sollol.config import Config
    from sollol.core.runtime import ClusterRuntime

log = logging.getLogger("sollol")
LIVE_CORE_KEYS = frozenset({"discovery_interval", "api_keys", "allowed_hosts",
                            "allowed_origins", "metrics_public"})
"""Core keys a reload applies at once (the gateway rebuilds its guard); the routes name their
own."""
IDLE_CHECK = 5.0
"""Seconds between looks at `discovery_interval` while it is 0 (a reload may turn it on)."""


def members(cluster: ClusterRuntime) -> dict[str, Membership]:
    """The routes whose backends can change while they serve."""
    return {name: route for name, route in cluster.routes.items()
            if isinstance(route, Membership)}


async def rediscover(
    cluster: ClusterRuntime, *, prune: bool = False
) -> dict[str, dict[str, list[str]]]:
    """Run discovery again and hand each member route its kinds of backends."""
    routes = members(cluster)
    if not routes:
        return {}
    backends = await asyncio.to_thread(cluster.discover)
    changes: dict[str, dict[str, list[str]]] = {}
    for name, route in routes.items():
        kinds = set(route.kinds)
        mine = [b for b in backends if b.kind in kinds]
        changes[name] = dict(await route.sync_backends(mine, prune=prune))
    return changes


def _changed(changes: dict[str, dict[str, list[str]]]) -> dict[str, dict[str, list[str]]]:
    return {name: {k: v for k, v in change.items() if v}
            for name, change in changes.items() if any(change.values())}


async def discovery_loop(cluster: ClusterRuntime) -> None:
    """Re-run discovery every `discovery_interval` seconds (read each round: reloads apply)."""
    while True:
        interval = float(cluster.config.get("discovery_interval", 0) or 0)
        await asyncio.sleep(interval or IDLE_CHECK)
        if not interval or not cluster.config.get("discovery_interval"):
            continue
        try:
            changes = _changed(await rediscover(cluster))
        except Exception:  # a discovery hook must not end the loop
            log.exception("re-discovery failed")
            continue
        if changes:
            log.info("discovery: %s", describe(changes))


async def reload(cluster: ClusterRuntime, load: Callable[[], Config]) -> dict[str, Any]:
    """Re-read the config with `load`, apply what can change live, report what changed.

    An invalid config changes nothing: the error is logged and returned, the old config stays.
    """
    try:
        config = await asyncio.to_thread(load)
    except SollolError as exc:
        log.error("config reload failed, keeping the running config: %s", exc)
        return {"ok": False, "error": str(exc)}
    old = cluster.config
    changed = sorted(k for k in {*old.values, *config.values} if old.get(k) != config.get(k))
    cluster.config = config
    live = set(LIVE_CORE_KEYS)
    for route in members(cluster).values():
        live |= set(route.reconfigure(config))
    changes = _changed(await rediscover(cluster, prune=True))
    report = {"ok": True, "changed": changed,
              "restart_needed": [k for k in changed if k not in live], "membership": changes}
    log.info("config reloaded: %s changed%s%s", ", ".join(changed) or "nothing",
             f"; {describe(changes)}" if changes else "",
             f"; needs a restart to apply: {', '.join(report['restart_needed'])}"
             if report["restart_needed"] else "")
    return report


def describe(changes: dict[str, dict[str, list[str]]]) -> str:
    """`pool: added a, b; removed c` for logs."""
    parts = []
    for name, change in changes.items():
        said = "; ".join(f"{what} {', '.join(ids)}" for what, ids in change.items() if ids)
        parts.append(f"{name}: {said}")
    return " | ".join(parts)
