"""Endpoints that answer from the cluster itself: model lists, versions and SOLLOL's state."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from sollol import __version__
from sollol.core.aliases import aliases
from sollol.core.capabilities import cluster_words
from sollol.core.names import canonical, is_path
from sollol.core.router import POOL
from sollol.core.scope import visible_entries
from sollol.errors import ModelNotFound, NoRouteAvailable, RequestError

log = logging.getLogger("sollol.gateway")

OLLAMA_API_VERSION = "0.33.0"
"""The Ollama API level the gateway speaks (what `GET /api/version` reports)."""

if TYPE_CHECKING:
    from sollol.core.runtime import ClusterRuntime


async def _gather(cluster: ClusterRuntime, method: str) -> list[dict[str, Any]]:
    """`list_models()` or `running()` from every route, de-duplicated by model name."""
    providers = list(cluster.routes.values())
    results = await asyncio.gather(*(getattr(p, method)() for p in providers),
                                   return_exceptions=True)
    seen: dict[str, dict[str, Any]] = {}
    for provider, result in zip(providers, results, strict=True):
        if isinstance(result, BaseException):
            log.warning("route %s failed to list models: %s", provider.name, result)
            continue
        for entry in result:
            name = entry.get("name") or entry.get("model")
            # one entry per model: "x" and "x:latest" are one; a file path is no model name
            if name and not is_path(name) and canonical(name) not in seen:
                seen[canonical(name)] = entry
    for alias in aliases(cluster.config).values():
        target = seen.get(canonical(alias.model))
        if target is not None and canonical(alias.name) not in seen:
            seen[canonical(alias.name)] = {**target, "name": alias.name, "model": alias.name,
                                           "alias_of": alias.model}
    return list(seen.values())


def _visible(cluster: ClusterRuntime, scope: dict[str, Any],
             entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries the request's access key may use, aliases by their targets too (all of
    them when there is no key; sollol.core.scope)."""
    return visible_entries(cluster.config, scope.get("sollol.key"), entries)


async def tags(cluster: ClusterRuntime, scope: dict[str, Any]) -> Any:
    """`GET /api/tags`: each model with what the nodes that hold it can do (`capabilities`,
    as `/api/show` reports them)."""
    entries = _visible(cluster, scope, await _gather(cluster, "list_models"))
    states = cluster.route_states().values()
    out = []
    for entry in entries:
        found = cluster_words(states, str(entry.get("alias_of") or entry.get("name")
                                          or entry.get("model")))
        out.append({**entry, "capabilities": found} if found else entry)
    return {"models": out}


async def ps(cluster: ClusterRuntime, scope: dict[str, Any]) -> Any:
    return {"models": _visible(cluster, scope, await _gather(cluster, "running"))}


async def version(cluster: ClusterRuntime, scope: dict[str, Any]) -> Any:
    return {"version": OLLAMA_API_VERSION, "sollol": __version__}


async def status(cluster: ClusterRuntime, scope: dict[str, Any]) -> Any:
    """`GET /api/status`: whether anything can serve, and per route its healthy backends and
    the requests it takes at once (what a remote `sollol.Cluster` sizes a fan-out by)."""
    states = cluster.route_states()
    routes = {name: {"available": state.available, "healthy": len(state.healthy),
                     "backends": len(state.backends),
                     "capacity": state.capacity if state.capacity is not None
                     else sum(b.capacity or 1 for b in state.healthy)}
              for name, state in states.items()}
    ok = any(state.available for state in states.values())
    return {"status": "ok" if ok else "unavailable", "version": OLLAMA_API_VERSION,
            "sollol": __version__, "routes": routes}


async def openai_models(cluster: ClusterRuntime, scope: dict[str, Any]) -> Any:
    now = int(time.time())
    data = [{"id": entry.get("name") or entry.get("model"), "object": "model", "created": now,
             "owned_by": "sollol"}
            for entry in _visible(cluster, scope, await _gather(cluster, "list_models"))]
    return {"object": "list", "data": data}


async def openai_model(cluster: ClusterRuntime, scope: dict[str, Any]) -> Any:
    name = scope["path"].removeprefix("/v1/models/")
    for entry in (await openai_models(cluster, scope))["data"]:
        if name in (entry["id"], str(entry["id"]).removesuffix(":latest")):
            return entry
    raise ModelNotFound(f"model {name!r} not found")


async def state(cluster: ClusterRuntime, scope: dict[str, Any]) -> Any:
    return cluster.snapshot()


async def nodes(cluster: ClusterRuntime, scope: dict[str, Any]) -> Any:
    provider = cluster.routes.get(POOL)
    if provider is None:
        raise NoRouteAvailable("no pool route is running (is the ollama_pool plugin enabled?)")
    return dict(provider.snapshot())


async def route_snapshot(cluster: ClusterRuntime, scope: dict[str, Any]) -> Any:
    name = scope["path"].removeprefix("/sollol/routes/")
    provider = cluster.routes.get(name)
    if provider is None:
        known = ", ".join(sorted(cluster.routes)) or "none"
        raise ModelNotFound(f"no route named {name!r} (routes: {known})")
    return dict(provider.snapshot())


async def route_decision(cluster: ClusterRuntime, scope: dict[str, Any]) -> Any:
    """The decision for a model and context, with its reason and numbers; nothing is sent."""
    query = _query(scope)
    model = query.get("model")
    if not model:
        raise RequestError("query parameter 'model' is required, e.g. /sollol/route?model=llama3")
    ctx = _int(query, "ctx")
    endpoint = query.get("endpoint", "chat")
    if endpoint not in ("chat", "generate", "embed"):
        raise RequestError("query parameter 'endpoint' must be chat, generate or embed")
    return await cluster.explain(model, endpoint=endpoint, context_length=ctx)


async def events(cluster: ClusterRuntime, scope: dict[str, Any]) -> Any:
    limit = _int(_query(scope), "limit") or 100
    return {"events": [e.as_dict() for e in cluster.events.recent(limit)]}


def _query(scope: dict[str, Any]) -> dict[str, str]:
    parsed = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return {key: values[-1] for key, values in parsed.items()}


def _int(query: dict[str, str], name: str) -> int | None:
    text = query.get(name)
    if text is None or text == "":
        return None
    if not (text.isascii() and text.isdigit() and len(text) <= 12):
        raise RequestError(f"query parameter {name!r} must be a whole number below 10^12, "
                           f"not {text[:40]!r}")
    return int(text)


Handler = Callable[["ClusterRuntime", dict[str, Any]], Awaitable[Any]]
GET_HANDLERS: dict[str, Handler] = {
    "/api/tags": tags, "/api/ps": ps, "/api/version": version, "/api/status": status,
    "/v1/models": openai_models,
    "/sollol/state": state, "/sollol/nodes": nodes, "/sollol/route": route_decision,
    "/sollol/events": events,
}
PREFIX_HANDLERS: dict[str, Handler] = {"/sollol/routes/": route_snapshot,
                                       "/v1/models/": openai_model}
