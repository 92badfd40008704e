"""Model management across the pool: pull, push, create, delete and copy on many Ollama nodes at
once, and blob uploads for creates from local files.

Streaming operations (pull, create) merge every node's NDJSON progress into one stream; each
object carries a `node` field, and the last one sums up: `{"status": "success", "nodes": {...}}`
or `{"error": "...", "nodes": {...}}` naming the nodes that failed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from sollol.errors import BackendError, NoRouteAvailable, RequestError

from .discovery import OLLAMA, base_url
from .node import Node

if TYPE_CHECKING:
    from .route import PoolRoute

_DONE = object()


def _timeout(route: PoolRoute) -> httpx.Timeout:
    """A node may stay silent up to `request_timeout` (a pull verifying a big blob says nothing
    for a while), never forever: one hung node must not hang the whole fan-out."""
    settings = route.settings
    return httpx.Timeout(settings.request_timeout, connect=settings.connect_timeout)


def targets(route: PoolRoute, names: Collection[str] | None) -> list[Node]:
    """The named nodes (by id or address), or every healthy Ollama node."""
    if names:
        chosen = []
        for name in names:
            node = route.nodes.get(name) or next(
                (n for n in route.nodes.values() if name in (n.backend.address,
                                                             base_url(n.backend))), None)
            if node is None:
                known = ", ".join(route.nodes) or "none"
                raise RequestError(f"pool node {name!r} is not configured (nodes: {known})")
            if node.api != OLLAMA:
                raise RequestError(f"pool node {node.id} speaks the {node.api} API, which has no "
                                   "model management")
            chosen.append(node)
        return chosen
    chosen = [n for n in route.nodes.values() if n.healthy and n.api == OLLAMA]
    if not chosen:
        state = "; ".join(f"{n.id} ({n.api}): {n.detail}" for n in route.nodes.values())
        raise NoRouteAvailable(
            f"no healthy Ollama node to manage models on ({state or 'no nodes'})")
    return chosen


async def _node_progress(node: Node, path: str, body: Mapping[str, Any],
                         queue: asyncio.Queue[Any], timeout: httpx.Timeout) -> str | None:
    """Stream one node's progress into `queue`; return its error message, or None."""
    try:
        async with httpx.AsyncClient(base_url=base_url(node.backend), timeout=timeout,
                                     trust_env=False) as client, \
                client.stream("POST", path, json=dict(body)) as reply:
            if reply.status_code >= 400:
                raw = await reply.aread()
                return _error_text(raw, reply.status_code)
            last = None
            async for line in reply.aiter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                if isinstance(event, dict) and event.get("error"):
                    return str(event["error"])
                last = event
                await queue.put({"node": node.id, **event})
            if not isinstance(last, dict) or last.get("status") != "success":
                return "the node ended the stream without success"
            return None
    except (httpx.HTTPError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _error_text(raw: bytes, status: int) -> str:
    try:
        return str(json.loads(raw)["error"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}: {raw[:200].decode(errors='replace')}"


async def progress(route: PoolRoute, path: str, body: Mapping[str, Any],
                   names: Collection[str] | None) -> AsyncIterator[dict[str, Any]]:
    """Merged progress of one streaming operation on every target node."""
    nodes = targets(route, names)
    queue: asyncio.Queue[Any] = asyncio.Queue()
    results: dict[str, str] = {}

    async def run(node: Node) -> None:
        error = await _node_progress(node, path, body, queue, _timeout(route))
        results[node.id] = "success" if error is None else error
        if error is not None:
            await queue.put({"node": node.id, "error": error})
        await queue.put(_DONE)

    tasks = [asyncio.create_task(run(n)) for n in nodes]
    try:
        finished = 0
        while finished < len(tasks):
            item = await queue.get()
            if item is _DONE:
                finished += 1
                continue
            yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await route.probe(nodes)  # the model lists changed: routing must see it now
    failed = {k: v for k, v in results.items() if v != "success"}
    if failed:
        yield {"error": "failed on " + "; ".join(f"{k}: {v}" for k, v in failed.items()),
               "nodes": results}
    else:
        yield {"status": "success", "nodes": results}


async def upload_blobs(route: PoolRoute, blobs: Mapping[str, Path],
                       names: Collection[str] | None) -> dict[str, list[str]]:
    """Each blob goes to every target node whose `HEAD /api/blobs/:digest` says it lacks it;
    returns the digests sent per node. A node that refuses a blob is a BackendError."""
    nodes = targets(route, names)
    timeout = _timeout(route)

    async def one(node: Node) -> tuple[str, list[str]]:
        sent = []
        async with httpx.AsyncClient(base_url=base_url(node.backend), timeout=timeout,
                                     trust_env=False) as client:
            for digest, path in blobs.items():
                url = f"/api/blobs/{digest}"
                try:
                    if (await client.head(url)).status_code == 200:
                        continue
                    reply = await client.post(url, content=_file_chunks(path))
                except httpx.HTTPError as exc:
                    raise BackendError(f"{node.id}: could not send blob {digest}: "
                                       f"{type(exc).__name__}: {exc}") from None
                if reply.status_code >= 400:
                    raise BackendError(f"{node.id}: refused blob {digest}: "
                                       f"{_error_text(reply.content, reply.status_code)}")
                sent.append(digest)
        return node.id, sent

    return dict(await asyncio.gather(*(one(n) for n in nodes)))


async def _file_chunks(path: Path, size: int = 1 << 20) -> AsyncIterator[bytes]:
    """A file in 1 MiB pieces (a model file is never read into memory whole)."""
    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, size):
            yield chunk


async def fan_out(route: PoolRoute, method: str, path: str, body: Mapping[str, Any],
                  names: Collection[str] | None) -> dict[str, Any]:
    """Send one management request to every target node; per-node results and a summary."""
    nodes = targets(route, names)

    async def one(node: Node) -> tuple[str, int, str | None]:
        try:
            async with httpx.AsyncClient(base_url=base_url(node.backend),
                                         timeout=_timeout(route), trust_env=False) as client:
                reply = await client.request(method, path, json=dict(body))
        except httpx.HTTPError as exc:
            status = 504 if isinstance(exc, httpx.TimeoutException) else 502
            return node.id, status, f"{type(exc).__name__}: {exc}"
        error = None if reply.status_code < 400 else _error_text(reply.content,
                                                                 reply.status_code)
        return node.id, reply.status_code, error

    outcomes = await asyncio.gather(*(one(n) for n in nodes))
    await route.probe(nodes)
    per_node = {node: ({"status": "success"} if error is None else
                       {"status": status, "error": error}) for node, status, error in outcomes}
    statuses = [status for _, status, _ in outcomes]
    ok = all(s < 400 for s in statuses)
    summary: dict[str, Any] = {"status": "success" if ok else "error", "nodes": per_node}
    if not ok:
        summary["error"] = "failed on " + "; ".join(
            f"{node}: {error}" for node, _, error in outcomes if error)
        # every node said "no such model": that is a 404 for the client, not a partial failure
        summary["http_status"] = 404 if all(s == 404 for s in statuses) else 502
    return summary
