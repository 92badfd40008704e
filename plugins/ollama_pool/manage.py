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

from .node import Node
from .node_discovery import OLLAMA, base_url

if TYPE_CHECKING:
    from .pool_route import PoolRoute

_DONE = object()
MAX_LINE = 1024 * 1024
"""Longest progress line a node may send (Ollama's are well under 1 KiB)."""


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


class _Broken(Exception):
    """A node's progress stream broke the NDJSON contract or went quiet."""


async def _lines(reply: httpx.Response, idle: float) -> AsyncIterator[bytes]:
    """The reply's non-empty lines; _Broken when one takes longer than `idle` seconds to
    complete (a node trickling bytes without a newline stalls too) or is longer than MAX_LINE."""
    loop = asyncio.get_running_loop()
    chunks = reply.aiter_bytes()
    pending = b""
    deadline = loop.time() + idle
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                chunk = await anext(chunks, None)
        except TimeoutError:
            raise _Broken(f"sent no progress line for {idle:g}s "
                          "(pool_manage_idle_timeout)") from None
        if chunk is None:
            if pending.strip():
                yield pending
            return
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                yield line
        if lines:
            deadline = loop.time() + idle
        if len(pending) > MAX_LINE:
            raise _Broken(f"sent a progress line longer than {MAX_LINE} bytes")


async def _node_progress(node: Node, path: str, body: Mapping[str, Any],
                         queue: asyncio.Queue[Any], timeout: httpx.Timeout,
                         idle: float, statuses: dict[str, int]) -> str | None:
    """Stream one node's progress into `queue`; return its error message, or None.

    A node that refused the request records its HTTP status in `statuses`: an error status,
    or 400 for an error object in its stream (Ollama streams its refusals: "model not found").
    """
    try:
        async with httpx.AsyncClient(base_url=base_url(node.backend), timeout=timeout,
                                     headers=node.backend.auth_headers(),
                                     trust_env=False) as client, \
                client.stream("POST", path, json=dict(body)) as reply:
            if reply.status_code >= 400:
                raw = await _head_of(reply)
                statuses[node.id] = reply.status_code
                return _error_text(raw, reply.status_code)
            last = None
            async for line in _lines(reply, idle):
                try:
                    event = json.loads(line)
                except (ValueError, RecursionError):  # nested without end
                    return f"sent a line that is not JSON: {_clip(line)}"
                if not isinstance(event, dict):
                    return f"sent a line that is not a JSON object: {_clip(line)}"
                if event.get("error"):
                    statuses[node.id] = 400
                    return _clip(str(event["error"]))
                last = event
                await queue.put({**event, "node": node.id})
            if last is None or last.get("status") != "success":
                return "the node ended the stream without success"
            return None
    except _Broken as exc:
        return str(exc)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _head_of(reply: httpx.Response, limit: int = 64 * 1024) -> bytes:
    """At most `limit` bytes of an error body (a hostile node may send an endless one)."""
    out = b""
    async for chunk in reply.aiter_bytes():
        out += chunk
        if len(out) >= limit:
            break
    return out[:limit]


def _clip(text: str | bytes, limit: int = 200) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return text if len(text) <= limit else text[:limit] + "..."


def _error_text(raw: bytes, status: int) -> str:
    try:
        return _clip(str(json.loads(raw)["error"]))
    except (ValueError, KeyError, TypeError, RecursionError):
        return f"HTTP {status}: {_clip(raw)}"


async def progress(route: PoolRoute, path: str, body: Mapping[str, Any],
                   names: Collection[str] | None) -> AsyncIterator[dict[str, Any]]:
    """Merged progress of one streaming operation on every target node."""
    nodes = targets(route, names)
    # bounded: a node that floods progress waits for the client instead of filling memory
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=64)
    results: dict[str, str] = {}
    statuses: dict[str, int] = {}

    async def run(node: Node) -> None:
        error = await _node_progress(node, path, body, queue, _timeout(route),
                                     route.settings.manage_idle_timeout, statuses)
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
        summary = {"error": "failed on " + "; ".join(f"{k}: {v}" for k, v in failed.items()),
                   "nodes": results}
        refused = [statuses.get(node, 502) for node in failed]
        if all(400 <= status < 500 for status in refused):
            # Every node refused the request itself (a bad name, missing fields): a client
            # error, answered as one, not a 502 that says a node broke.
            summary["http_status"] = refused[0] if len(set(refused)) == 1 else 400
        yield summary
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
                                     headers=node.backend.auth_headers(),
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
                                         headers=node.backend.auth_headers(),
                                         timeout=_timeout(route), trust_env=False) as client, \
                    client.stream(method, path, json=dict(body)) as reply:
                raw = await _head_of(reply)  # the answer is small; a hostile one is cut off
        except httpx.HTTPError as exc:
            status = 504 if isinstance(exc, httpx.TimeoutException) else 502
            return node.id, status, f"{type(exc).__name__}: {exc}"
        error = None if reply.status_code < 400 else _error_text(raw, reply.status_code)
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
