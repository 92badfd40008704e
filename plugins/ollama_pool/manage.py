"""Model management across the pool: pull, push, create, delete and copy on many Ollama nodes at
once, and blob uploads for creates from local files.

Streaming operations (pull, create) merge every node's NDJSON progress into one stream; each
object carries a `node` field, and the last one sums up: `{"status": "success", "nodes": {...}}`
or `{"error": "...", "nodes": {...}}` naming the nodes that failed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import attrs
import httpx

from sollol.errors import NoRouteAvailable, RequestError

from .manage_node import call, send_blobs, stream_progress
from .node import Node
from .node_discovery import OLLAMA, base_url
from .pool_settings import PoolSettings

_DONE = object()


@attrs.define(eq=False)
class ModelManager:
    """Model management on the pool's Ollama nodes, fanned out to the named or healthy ones."""

    nodes: Mapping[str, Node]
    """The pool's member nodes by id (the member table, only read here)."""
    settings: PoolSettings
    refresh: Callable[[list[Node]], Awaitable[None]]
    """Probes nodes again after their model lists changed: routing must see it at once."""

    def pull(self, model: str, nodes: Collection[str] | None = None,
             insecure: bool = False) -> AsyncIterator[dict[str, Any]]:
        """Pull on every healthy Ollama node (or the named ones): aggregated progress."""
        body = {"model": model, "stream": True, **({"insecure": True} if insecure else {})}
        return self._progress("/api/pull", body, nodes)

    def push(self, model: str, nodes: Collection[str] | None = None,
             insecure: bool = False) -> AsyncIterator[dict[str, Any]]:
        """Push from every healthy Ollama node (or the named ones): aggregated progress."""
        body = {"model": model, "stream": True, **({"insecure": True} if insecure else {})}
        return self._progress("/api/push", body, nodes)

    def create(self, body: Mapping[str, Any], nodes: Collection[str] | None = None,
               ) -> AsyncIterator[dict[str, Any]]:
        return self._progress("/api/create", {**body, "stream": True}, nodes)

    async def upload_blobs(self, blobs: Mapping[str, Path],
                           nodes: Collection[str] | None = None) -> dict[str, list[str]]:
        """Send each blob (digest -> file) to every target node whose `HEAD /api/blobs/:digest`
        says it lacks it; returns the digests sent per node. A refused blob is a BackendError."""
        timeout = self._timeout()
        return dict(await asyncio.gather(*(send_blobs(n, blobs, timeout)
                                           for n in self.targets(nodes))))

    async def delete(self, model: str, nodes: Collection[str] | None = None) -> dict[str, Any]:
        return await self._fan_out("DELETE", "/api/delete", {"model": model}, nodes)

    async def copy(self, source: str, destination: str,
                   nodes: Collection[str] | None = None) -> dict[str, Any]:
        body = {"source": source, "destination": destination}
        return await self._fan_out("POST", "/api/copy", body, nodes)

    def targets(self, names: Collection[str] | None) -> list[Node]:
        """The named nodes (by id or address), or every healthy Ollama node."""
        if names:
            chosen = []
            for name in names:
                node = self.nodes.get(name) or next(
                    (n for n in self.nodes.values() if name in (n.backend.address,
                                                                base_url(n.backend))), None)
                if node is None:
                    known = ", ".join(self.nodes) or "none"
                    raise RequestError(f"pool node {name!r} is not configured (nodes: {known})")
                if node.api != OLLAMA:
                    raise RequestError(f"pool node {node.id} speaks the {node.api} API, which "
                                       "has no model management")
                chosen.append(node)
            return chosen
        chosen = [n for n in self.nodes.values() if n.healthy and n.api == OLLAMA]
        if not chosen:
            state = "; ".join(f"{n.id} ({n.api}): {n.detail}" for n in self.nodes.values())
            raise NoRouteAvailable(
                f"no healthy Ollama node to manage models on ({state or 'no nodes'})")
        return chosen

    def _timeout(self) -> httpx.Timeout:
        """A node may stay silent up to `request_timeout` (a pull verifying a big blob says
        nothing for a while), never forever: one hung node must not hang the whole fan-out."""
        return httpx.Timeout(self.settings.request_timeout,
                             connect=self.settings.connect_timeout)

    async def _progress(self, path: str, body: Mapping[str, Any],
                        names: Collection[str] | None) -> AsyncIterator[dict[str, Any]]:
        """Merged progress of one streaming operation on every target node."""
        nodes = self.targets(names)
        # bounded: a node that floods progress waits for the client instead of filling memory
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=64)
        results: dict[str, str] = {}
        statuses: dict[str, int] = {}

        async def run(node: Node) -> None:
            error = await stream_progress(node, path, body, queue, timeout=self._timeout(),
                                          idle=self.settings.manage_idle_timeout,
                                          statuses=statuses)
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
        await self.refresh(nodes)
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

    async def _fan_out(self, method: str, path: str, body: Mapping[str, Any],
                       names: Collection[str] | None) -> dict[str, Any]:
        """Send one management request to every target node; per-node results and a summary."""
        nodes = self.targets(names)
        timeout = self._timeout()
        outcomes = await asyncio.gather(*(call(n, method, path, body, timeout) for n in nodes))
        await self.refresh(nodes)
        per_node = {node: ({"status": "success"} if error is None else
                           {"status": status, "error": error})
                    for node, status, error in outcomes}
        statuses = [status for _, status, _ in outcomes]
        ok = all(s < 400 for s in statuses)
        summary: dict[str, Any] = {"status": "success" if ok else "error", "nodes": per_node}
        if not ok:
            summary["error"] = "failed on " + "; ".join(
                f"{node}: {error}" for node, _, error in outcomes if error)
            # every node said "no such model": that is a 404 for the client, not a partial failure
            summary["http_status"] = 404 if all(s == 404 for s in statuses) else 502
        return summary
