"""The whole picture as data: what the dashboard and `sollol status` show.

Built from the routes' own snapshots (the same data `/sollol/state` serves), the recorder's
per-node request statistics and the backends' scraped throughput.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sollol import __version__
from sollol.observe.backend_metrics import BackendMetrics
from sollol.observe.recorder import Recorder, request_row

if TYPE_CHECKING:
    from sollol.core.runtime import ClusterRuntime


def overview(cluster: ClusterRuntime, recorder: Recorder | None, scraped: BackendMetrics | None, *,
             started_at: float, running: int) -> dict[str, Any]:
    """Nodes, rpc-servers, coordinators and request totals, as plain JSON-ready data."""
    stats = recorder.node_stats if recorder else {}
    throughput = scraped.as_dict() if scraped else {}
    nodes: list[dict[str, Any]] = []
    rpc_servers: list[dict[str, Any]] = []
    coordinators: list[dict[str, Any]] = []
    routes: dict[str, dict[str, Any]] = {}
    waiting = 0
    for name, provider in cluster.routes.items():
        snapshot = dict(provider.snapshot())
        queue = snapshot.get("queue") or {}
        waiting += int(queue.get("waiting") or 0)
        for node in snapshot.pop("nodes", None) or ():
            nodes.append({**node, "route": name, "stats": _stats(stats.get(node["id"])),
                          "throughput": throughput.get(node["id"])})
        for backend in snapshot.pop("backends", None) or ():
            rpc_servers.append({**backend, "route": name})
        for coord in snapshot.pop("coordinators", None) or ():
            label = str(coord.get("id", "")).rpartition("@")[0]
            coordinators.append({**coord, "route": name, "stats": _stats(stats.get(label)),
                                 "throughput": throughput.get(coord.get("id"))})
        routes[name] = snapshot
    holders = {b: c["model"] for c in coordinators if c.get("state") in ("starting", "ready")
               for b in c.get("backends") or ()}
    for backend in rpc_servers:
        backend["coordinator"] = holders.get(backend.get("address"))
    now = time.time()
    return {
        "time": now, "version": __version__, "started_at": started_at,
        "uptime_s": round(now - started_at, 1),
        "modes": {"model_sharding_enabled": cluster.config["model_sharding_enabled"],
                  "task_distribution_enabled": cluster.config["task_distribution_enabled"]},
        "policy": cluster.policy.name if cluster.policy else None,
        "metrics_enabled": recorder is not None,
        "requests": {"running": max(running - waiting, 0), "waiting": waiting,
                     **(recorder.totals() if recorder else {})},
        "last_minute": recorder.history.rates(60.0, now) if recorder else None,
        "nodes": nodes, "rpc_servers": rpc_servers, "coordinators": coordinators,
        "routes": routes,
    }


def recent_requests(cluster: ClusterRuntime, limit: int = 200) -> list[dict[str, Any]]:
    return [request_row(e) for e in cluster.events.recent(limit)]


def _stats(stats: Any) -> dict[str, Any] | None:
    return stats.as_dict() if stats is not None else None
