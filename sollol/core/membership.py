"""Backends joining and leaving a running cluster: discovery on an interval, config reloads.

Routes that implement `sollol.routes.Membership` take part; others keep the backends they
started with. The gateway's admin endpoints (`/sollol/nodes`, `/sollol/rpc`, `/sollol/reload`)
and `sollol run`'s SIGHUP handler call into this module.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from sollol.errors import SollolError
from sollol.routes import Membership

if TYPE_CHECKING:
    from sollol.config import Config
    from sollol.models import Backend

log = logging.getLogger("sollol")
LIVE_CORE_KEYS = frozenset({
    # the gateway rebuilds its guard from the new config
    "api_keys", "allowed_hosts", "allowed_origins", "metrics_public",
    # read from the runtime's current config on every request or round
    "discovery_interval", "model_aliases", "model_fallbacks", "gguf_dirs", "request_timeout",
    "allowed_registries",
})
"""Core keys a reload applies at once; the routes name their own (`reconfigure`)."""
RESTART_CORE_KEYS = frozenset({
    # the listening socket, its limits, the plugin set and the routes are built at start
    "gateway_host", "gateway_port", "max_connections", "header_timeout", "body_timeout",
    "max_client_share", "max_header_bytes", "max_headers", "max_event_streams",
    "max_body_bytes", "blob_dir", "max_blob_bytes", "blob_quota_bytes", "blob_min_free_bytes",
    "blob_idle_timeout", "blob_keep_after_create", "plugins", "disabled_plugins",
    "model_sharding_enabled", "task_distribution_enabled", "routing_policy", "policy_settings",
    # the dispatcher's upstream pool, the monitor and the binaries are made once
    "connect_timeout", "max_reply_bytes", "stream_idle_timeout", "metrics_enabled",
    "metrics_max_models", "backend_metrics_interval", "llama_cpp_dir",
    # the routes' own probes read it (they name it from reconfigure when they follow it)
    "health_interval",
    # the local cluster's nodes are started with their context size (`sollol run --local`)
    "local_ctx_size",
})
"""Core keys that take a restart unless a route's `reconfigure` says it follows them. Every core
setting is in exactly one of the two sets (tests/core/test_membership.py checks it), so a new
setting cannot be reported wrongly by default."""
IDLE_CHECK = 5.0
"""Seconds between looks at `discovery_interval` while it is 0 (a reload may turn it on)."""


def members(routes: Mapping[str, object]) -> dict[str, Membership]:
    """The routes whose backends can change while they serve."""
    return {name: route for name, route in routes.items() if isinstance(route, Membership)}


@attrs.define
class LiveMembership:
    """Re-discovery and reloads for the member routes of one runtime, which owns the config.

    It is handed the runtime's route table (read at each call: routes register at start), its
    discovery and a way to read the current config, so it never needs the runtime itself.
    """

    routes: Mapping[str, object]
    discover: Callable[[], list[Backend]]
    config: Callable[[], Config]

    def members(self) -> dict[str, Membership]:
        return members(self.routes)

    async def rediscover(self, *, prune: bool = False) -> dict[str, dict[str, list[str]]]:
        """Run discovery again and hand each member route its kinds of backends."""
        routes = self.members()
        if not routes:
            return {}
        backends = await asyncio.to_thread(self.discover)
        changes: dict[str, dict[str, list[str]]] = {}
        for name, route in routes.items():
            kinds = set(route.kinds)
            mine = [b for b in backends if b.kind in kinds]
            changes[name] = dict(await route.sync_backends(mine, prune=prune))
        return changes

    async def loop(self) -> None:
        """Re-run discovery every `discovery_interval` seconds (read each round: reloads apply)."""
        while True:
            interval = float(self.config().get("discovery_interval", 0) or 0)
            await asyncio.sleep(interval or IDLE_CHECK)
            if not interval or not self.config().get("discovery_interval"):
                continue
            try:
                changes = _changed(await self.rediscover())
            except Exception:  # a discovery hook must not end the loop
                log.exception("re-discovery failed")
                continue
            if changes:
                log.info("discovery: %s", describe(changes))

    async def reload(self, load: Callable[[], Config],
                     adopt: Callable[[Config], None]) -> dict[str, Any]:
        """Re-read the config with `load`, `adopt` it, apply what can change live, report.

        An invalid config changes nothing: the error is logged and returned, the old config stays.
        """
        try:
            config = await asyncio.to_thread(load)
        except SollolError as exc:
            log.error("config reload failed, keeping the running config: %s", exc)
            return {"ok": False, "error": str(exc)}
        old = self.config()
        changed = sorted(k for k in {*old.values, *config.values}
                         if old.get(k) != config.get(k))
        adopt(config)
        live = set(LIVE_CORE_KEYS)
        for route in self.members().values():
            live |= set(route.reconfigure(config))
        changes = _changed(await self.rediscover(prune=True))
        report = {"ok": True, "changed": changed,
                  "restart_needed": [k for k in changed if k not in live],
                  "membership": changes}
        log.info("config reloaded: %s changed%s%s", ", ".join(changed) or "nothing",
                 f"; {describe(changes)}" if changes else "",
                 f"; needs a restart to apply: {', '.join(report['restart_needed'])}"
                 if report["restart_needed"] else "")
        return report


def _changed(changes: dict[str, dict[str, list[str]]]) -> dict[str, dict[str, list[str]]]:
    return {name: {k: v for k, v in change.items() if v}
            for name, change in changes.items() if any(change.values())}


def describe(changes: dict[str, dict[str, list[str]]]) -> str:
    """`pool: added a, b; removed c` for logs."""
    parts = []
    for name, change in changes.items():
        said = "; ".join(f"{what} {', '.join(ids)}" for what, ids in change.items() if ids)
        parts.append(f"{name}: {said}")
    return " | ".join(parts)
