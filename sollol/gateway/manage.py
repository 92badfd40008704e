"""Model management through the gateway: `/api/pull`, `/api/create`, `/api/delete`, `/api/copy`
fanned out by the pool route to all of its Ollama nodes, or to the ones named.

Nodes are named with a SOLLOL extension: a `nodes` list in the body, or `?node=ID` (repeatable).
The route must offer `pull`, `create`, `delete` and `copy` (the bundled pool plugin does); the
core never imports a plugin, so this module only looks the methods up on the route object.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from sollol.errors import NoRouteAvailable, RequestError
from sollol.gateway.asgi import Receive, Scope, Send, read_body, send_json
from sollol.router import POOL

if TYPE_CHECKING:
    from sollol.cluster import Cluster

METHODS = {"/api/pull": "POST", "/api/create": "POST", "/api/copy": "POST",
           "/api/delete": "DELETE"}
_NDJSON = b"application/x-ndjson"


def _route(cluster: Cluster, operation: str) -> Any:
    route = cluster.routes.get(POOL)
    if route is None or not callable(getattr(route, operation, None)):
        raise NoRouteAvailable(f"model management needs a pool route that supports "
                               f"{operation!r} (is the ollama_pool plugin enabled?)")
    return route


def _body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"{}")
    except ValueError as exc:
        raise RequestError(f"invalid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    return body


def _nodes(scope: Scope, body: dict[str, Any]) -> list[str] | None:
    named = body.pop("nodes", None)
    if named is not None and (not isinstance(named, list)
                              or not all(isinstance(n, str) for n in named)):
        raise RequestError("field 'nodes' must be a list of node ids")
    query = parse_qs(scope.get("query_string", b"").decode()).get("node", [])
    return [*(named or []), *query] or None


def _text(body: dict[str, Any], *names: str) -> str:
    for name in names:
        value = body.get(name)
        if isinstance(value, str) and value.strip():
            return value
    raise RequestError(f"field {names[0]!r} is required")


async def handle(cluster: Cluster, scope: Scope, receive: Receive, send: Send,
                 max_body: int) -> None:
    """Serve one management request (the caller checked the path and method)."""
    path = scope["path"]
    body = _body(await read_body(scope, receive, max_body))
    nodes = _nodes(scope, body)
    if path in ("/api/pull", "/api/create"):
        operation = path.removeprefix("/api/")
        route = _route(cluster, operation)
        model = _text(body, "model", "name")
        stream = body.pop("stream", True) is not False
        events = (route.pull(model, nodes, insecure=bool(body.get("insecure")))
                  if operation == "pull" else route.create({**body, "model": model}, nodes))
        await _progress(send, events, stream)
        return
    if path == "/api/delete":
        result = await _route(cluster, "delete").delete(_text(body, "model", "name"), nodes)
    else:
        result = await _route(cluster, "copy").copy(_text(body, "source"),
                                                    _text(body, "destination"), nodes)
    status = 200 if result.get("status") == "success" else int(result.get("http_status", 502))
    await send_json(send, status, {k: v for k, v in result.items() if k != "http_status"})


async def _progress(send: Send, events: AsyncIterator[dict[str, Any]], stream: bool) -> None:
    """Aggregated NDJSON progress, or only the summary when `stream` is false."""
    first = await anext(events)  # raises (before any byte is sent) when no node can be used
    if not stream:
        last = first
        async for event in events:
            last = event
        await send_json(send, 200 if "error" not in last else 502, last)
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", _NDJSON), (b"cache-control", b"no-cache")]})
    await send({"type": "http.response.body", "body": json.dumps(first).encode() + b"\n",
                "more_body": True})
    async for event in events:
        await send({"type": "http.response.body", "body": json.dumps(event).encode() + b"\n",
                    "more_body": True})
    await send({"type": "http.response.body", "body": b""})
