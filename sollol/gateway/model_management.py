"""Model management through the gateway: `/api/pull`, `/api/push`, `/api/create`, `/api/delete`,
`/api/copy` fanned out by the pool route to all of its Ollama nodes, or to the ones named.

A create that names uploaded blobs (`files`, `adapters`: name -> digest) first sends each blob
the gateway holds to the target nodes that lack it (`upload_blobs` on the route); once the create
has succeeded, the gateway keeps its copies only `blob_keep_after_create` seconds more.

Nodes are named with a SOLLOL extension: a `nodes` list in the body, or `?node=ID` (repeatable).
The pool route serves these calls when it implements `sollol.routes.ModelManagement` (the bundled
pool plugin's does); the core never imports a plugin, so the protocol is the whole contract.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from sollol.core.registries import Registries
from sollol.dialects.jsonin import parse_json_object
from sollol.errors import NoRouteAvailable, RequestError
from sollol.gateway import manage_scope
from sollol.gateway.asgi import DisconnectWatch, Receive, Scope, Send, read_body, send_json
from sollol.gateway.blobs import parse_digest
from sollol.routes import POOL, ModelManagement

if TYPE_CHECKING:
    from sollol.core.runtime import ClusterRuntime
    from sollol.gateway.blobs import BlobSpool

_NDJSON = b"application/x-ndjson"


def _route(cluster: ClusterRuntime, operation: str) -> ModelManagement:
    route = cluster.routes.get(POOL)
    if not isinstance(route, ModelManagement):
        raise NoRouteAvailable(f"model management needs a pool route that supports "
                               f"{operation!r} (is the ollama_pool plugin enabled?)")
    return route


def _body(raw: bytes) -> dict[str, Any]:
    return parse_json_object(raw, manage_scope.FIELDS)[0] if raw.strip() else {}


def _nodes(scope: Scope, body: dict[str, Any]) -> list[str] | None:
    named = body.pop("nodes", None)
    if named is not None and (not isinstance(named, list)
                              or not all(isinstance(n, str) for n in named)):
        raise RequestError("field 'nodes' must be a list of node ids")
    query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("node", [])
    return [*(named or []), *query] or None


def _text(body: dict[str, Any], *names: str) -> str:
    """A model name from the body (`manage_scope.check` has checked it against the key)."""
    for name in names:
        value = body.get(name)
        if isinstance(value, str) and value.strip():
            return value
    raise RequestError(f"field {names[0]!r} is required")


async def handle(cluster: ClusterRuntime, scope: Scope, receive: Receive, send: Send,
                 max_body: int, blobs: BlobSpool | None = None) -> None:
    """Serve one management request (the caller checked the path and method)."""
    path = scope["path"]
    body = _body(await read_body(scope, receive, max_body))
    nodes = _nodes(scope, body)
    task = asyncio.current_task()
    assert task is not None
    # a client that goes away cancels the fan-out: every node sees its connection closed
    watch = DisconnectWatch(task, receive)
    try:
        await _manage(cluster, scope, path, body, nodes, send, blobs)
        watch.finishing = True
    except asyncio.CancelledError:
        if not watch.disconnected:
            raise
        task.uncancel()  # nobody is listening: the cancelled fan-out is the whole answer
    finally:
        watch.stop()


async def _manage(cluster: ClusterRuntime, scope: Scope, path: str, body: dict[str, Any],
                  nodes: list[str] | None, send: Send, blobs: BlobSpool | None) -> None:
    manage_scope.check(scope.get("sollol.key"), path, body, blobs)  # every model it names
    if path in ("/api/pull", "/api/push", "/api/create"):
        operation = path.removeprefix("/api/")
        route = _route(cluster, operation)
        model = _text(body, "model", "name")
        Registries(cluster.config["allowed_registries"]).check_request(operation, model, body)
        stream = body.pop("stream", True) is not False
        insecure = bool(body.get("insecure"))
        if operation == "pull":
            events = route.pull(model, nodes, insecure=insecure)
        elif operation == "push":
            events = route.push(model, nodes, insecure=insecure)
        else:
            sent = await _send_blobs(cluster, body, nodes, blobs)
            events = route.create({**body, "model": model}, nodes)
        succeeded = await _progress(send, events, stream)
        if succeeded and operation == "create" and blobs is not None:
            for digest in sent:
                blobs.created(digest)
        return
    if path == "/api/delete":
        result = await _route(cluster, "delete").delete(_text(body, "model", "name"),
                                                        nodes)
    else:
        result = await _route(cluster, "copy").copy(_text(body, "source"),
                                                    _text(body, "destination"), nodes)
    status = 200 if result.get("status") == "success" else int(result.get("http_status", 502))
    await send_json(send, status, {k: v for k, v in result.items() if k != "http_status"})


async def _send_blobs(cluster: ClusterRuntime, body: dict[str, Any], nodes: list[str] | None,
                      blobs: BlobSpool | None) -> list[str]:
    """Blobs named by a create and held by the gateway go to the nodes that lack them; the
    digests sent."""
    named: dict[str, Path] = {}
    for field in ("files", "adapters"):
        value = body.get(field)
        if value is None:
            continue
        if not isinstance(value, dict) or not all(isinstance(d, str) for d in value.values()):
            raise RequestError(f"field {field!r} must map file names to blob digests")
        for digest in value.values():
            path = blobs.path(digest) if blobs is not None else None
            if path is not None:
                named[parse_digest(digest)] = path
    if named:
        await _route(cluster, "upload_blobs").upload_blobs(named, nodes)
    return list(named)


async def _progress(send: Send, events: AsyncIterator[dict[str, Any]], stream: bool) -> bool:
    """Aggregated NDJSON progress, or only the summary when `stream` is false; whether it
    ended without an error."""
    try:
        return await _relay(send, events, stream)
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()  # (cancelled) stops every node's part of the fan-out now


async def _relay(send: Send, events: AsyncIterator[dict[str, Any]], stream: bool) -> bool:
    first = await anext(events)  # raises (before any byte is sent) when no node can be used
    if not stream:
        last = first
        async for event in events:
            last = event
        status = int(last.pop("http_status", 502)) if "error" in last else 200
        await send_json(send, status, last)
        return status == 200
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", _NDJSON), (b"cache-control", b"no-cache")]})
    await send({"type": "http.response.body", "body": json.dumps(first).encode() + b"\n",
                "more_body": True})
    last = first
    async for event in events:
        event.pop("http_status", None)  # the summary's status for unstreamed replies only
        last = event
        await send({"type": "http.response.body", "body": json.dumps(event).encode() + b"\n",
                    "more_body": True})
    await send({"type": "http.response.body", "body": b""})
    return "error" not in last
