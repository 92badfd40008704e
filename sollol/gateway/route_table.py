"""The gateway's route table: every path it serves, its methods, its dialect and its handler.

The single source of routes: the ASGI app dispatches from it, docs/api.md is checked against it
(tests/project/test_docs.py) and property tests iterate over it.
"""

from __future__ import annotations

from typing import Literal

import attrs

from sollol.forwarding.calls import PATHS, Op
from sollol.gateway import info, monitor
from sollol.models import Api

Kind = Literal["root", "dispatch", "manage", "blobs", "info", "monitor", "admin"]
"""How a path is served: `dispatch` goes through the Dispatcher to a backend, `manage` and
`blobs` are fanned out to the pool's Ollama nodes, `info` answers from the cluster itself,
`monitor` is metrics and the dashboard (sollol.gateway.monitor), `admin` changes the cluster
(nodes and rpc-servers join and leave, the config is re-read: sollol.gateway.admin_api)."""


@attrs.frozen
class Route:
    """One served path (or, with `prefix`, every path under it)."""

    path: str
    methods: tuple[str, ...]
    api: Api
    """The dialect of the route's error bodies."""
    kind: Kind
    op: Op | None = None
    prefix: bool = False


def _dispatched(path: str, api: Api, op: Op) -> Route:
    return Route(path, ("POST",), api, "dispatch", op)


def _info_api(path: str) -> Api:
    return "openai" if path.startswith("/v1/") else "ollama"


ROUTES: tuple[Route, ...] = (
    Route("/", ("GET", "HEAD"), "ollama", "root"),
    *(_dispatched(path, api, op) for (api, op), path in PATHS.items()),
    Route("/api/pull", ("POST",), "ollama", "manage"),
    Route("/api/push", ("POST",), "ollama", "manage"),
    Route("/api/create", ("POST",), "ollama", "manage"),
    Route("/api/copy", ("POST",), "ollama", "manage"),
    Route("/api/delete", ("DELETE",), "ollama", "manage"),
    Route("/api/blobs/", ("HEAD", "POST"), "ollama", "blobs", prefix=True),
    *(Route(path, ("GET", "HEAD"), _info_api(path), "info") for path in info.GET_HANDLERS),
    *(Route(path, ("GET", "HEAD"), _info_api(path), "info", prefix=True)
      for path in info.PREFIX_HANDLERS),
    *(Route(path, ("GET", "HEAD"), "ollama", "monitor") for path in monitor.PATHS),
    Route("/sollol/nodes", ("POST",), "ollama", "admin"),
    Route("/sollol/nodes/", ("DELETE",), "ollama", "admin", prefix=True),
    Route("/sollol/rpc", ("POST",), "ollama", "admin"),
    Route("/sollol/rpc/", ("DELETE",), "ollama", "admin", prefix=True),
    Route("/sollol/reload", ("POST",), "ollama", "admin"),
)

_EXACT: dict[str, list[Route]] = {}
for _route in ROUTES:
    if not _route.prefix:
        _EXACT.setdefault(_route.path, []).append(_route)
_PREFIXES = tuple(route for route in ROUTES if route.prefix)


def find(path: str, method: str | None = None) -> Route | None:
    """The route serving `path` (with `method`, the one taking it when a path has several:
    `GET /sollol/nodes` lists the pool, `POST /sollol/nodes` adds a node), or None."""
    exact = _EXACT.get(path)
    if exact:
        return next((r for r in exact if method in r.methods), exact[0])
    prefixed = [r for r in _PREFIXES if path.startswith(r.path)]
    return next((r for r in prefixed if method in r.methods), prefixed[0] if prefixed else None)


def dialect(path: str) -> Api:
    """The dialect of an error for `path`, also for paths no route serves."""
    route = find(path)
    if route is not None:
        return route.api
    if path.startswith("/v1/messages"):
        return "anthropic"
    return "openai" if path.startswith("/v1/") else "ollama"
