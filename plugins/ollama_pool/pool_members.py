"""Nodes joining and leaving a running pool: by an operator, by re-discovery, by a config reload.

A removed node takes no new requests; those it is serving finish (it is kept aside, "draining",
until they do). Nodes an operator added stay through re-discovery and reloads until removed;
nodes an operator removed are not brought back by discovery until added again.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from sollol.errors import BackendNotFound, RequestError
from sollol.models import Backend

from .node import Node
from .node_discovery import base_url, parse_node
from .pool_settings import PoolSettings

if TYPE_CHECKING:
    from sollol.core.live_memory import LiveMemory

ADMIN = "admin"


@attrs.define(eq=False)
class PoolMembers:
    """The pool's node table: the member nodes by id, the removed ones still draining, and what
    an operator pinned or removed. Nodes join and leave only through its methods."""

    settings: PoolSettings
    dialects: Callable[[], Mapping[str, str]]
    """{kind: dialect} the pool serves; asked each time, as plugins' kinds are known late."""
    probe: Callable[[list[Node]], Awaitable[None]]
    """Probes new nodes once, before they take requests."""
    changed: Callable[[Collection[Node]], None]
    """Told after nodes joined or left (given those that left), so scheduling sees it."""
    nodes: dict[str, Node] = attrs.field(factory=dict)
    draining: dict[str, Node] = attrs.field(factory=dict)
    """Removed nodes whose in-flight requests have not finished yet."""
    pinned: set[str] = attrs.field(factory=set)
    """Nodes an operator added: re-discovery and config reloads keep them."""
    removed: set[str] = attrs.field(factory=set)
    """Nodes an operator removed: re-discovery does not bring them back."""
    live: LiveMemory | None = None
    """Memory machines report themselves (the cluster's `live_memory`), for nodes' totals."""

    @property
    def kinds(self) -> list[str]:
        """The backend kinds the pool serves (ours and other plugins' in a known dialect)."""
        return list(self.dialects())

    def find(self, ident: str) -> str | None:
        """The id of the node named by id, address or URL, or None."""
        if ident in self.nodes:
            return ident
        ident = ident.rstrip("/")
        for node in self.nodes.values():
            if ident in (node.backend.address, base_url(node.backend)):
                return node.id
        return None

    def is_member(self, node: Node) -> bool:
        """Whether `node` (this very object, not a namesake) is in the table."""
        return self.nodes.get(node.id) is node

    def drained(self, node: Node) -> None:
        """A request on a removed node ended: forget the node once it serves none."""
        if node.in_flight == 0:
            self.draining.pop(node.id, None)

    def reconfigure(self, settings: PoolSettings) -> None:
        """Take new settings: nodes on the old default concurrency move to the new one
        (a node that reports its own slots keeps them)."""
        old, self.settings = self.settings, settings
        for node in self.nodes.values():
            if node.limit == old.concurrency and not (node.report and
                                                      node.report.extra.get("slots")):
                node.limit = settings.concurrency

    def _node(self, backend: Backend) -> Node:
        """The node for `backend`: the draining one if it comes back (at the same address)
        before it drained."""
        node = self.draining.pop(backend.id, None)
        if node is not None and node.backend.address == backend.address:
            return node
        memory = self.settings.memory
        declared = memory.get(backend.id, memory.get(backend.address))
        return Node(backend, self.settings.concurrency, declared,
                    api=self.dialects().get(backend.kind, backend.kind), live=self.live)

    async def join(self, backends: Collection[Backend]) -> list[str]:
        """Add nodes (probed once before they take requests); returns the ids added."""
        new = [self._node(b) for b in backends if b.id not in self.nodes]
        for node in new:
            self.nodes[node.id] = node
        self.changed(())
        if new:
            await self.probe(new)
        return [n.id for n in new]

    def leave(self, ids: Iterable[str]) -> list[dict[str, Any]]:
        """Take nodes out: no new requests; in-flight ones finish. Returns what each had running."""
        gone = [self.nodes.pop(i) for i in ids if i in self.nodes]
        for node in gone:
            if node.in_flight:
                self.draining[node.id] = node
        self.changed(gone)  # requests pinned to them, or waiting for a model only they held, fail
        return [{"id": n.id, "draining": n.in_flight} for n in gone]

    async def add(self, address: str) -> dict[str, Any]:
        """An operator adds a node by address (`host:port`, `http://...`, `openai://...`)."""
        try:
            backend = parse_node(address, ADMIN)
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        self.removed.discard(backend.id)
        self.pinned.add(backend.id)
        added = await self.join([backend])
        node = self.nodes[backend.id]
        return {"added": added, "node": node.snapshot(time.monotonic()),
                **({} if added else {"detail": f"{backend.id} was already a pool node"})}

    def remove(self, ident: str) -> dict[str, Any]:
        """An operator removes a node by id, address or URL."""
        node_id = self.find(ident)
        if node_id is None:
            known = ", ".join(self.nodes) or "none"
            raise BackendNotFound(f"{ident!r} is not a pool node (nodes: {known})")
        self.pinned.discard(node_id)
        self.removed.add(node_id)
        return {"removed": self.leave([node_id])}

    async def sync(self, backends: Collection[Backend], *, prune: bool) -> dict[str, list[str]]:
        """Bring the pool in line with a discovery result: add what is new; with `prune` (a config
        reload), also remove what is no longer found, except nodes an operator added."""
        kinds = set(self.kinds)
        wanted = {b.id: b for b in backends if b.kind in kinds and b.id not in self.removed}
        for ident, backend in wanted.items():
            node = self.nodes.get(ident)
            if node is not None and node.backend.credentials != backend.credentials:
                # a node's key changed in the config: the next request and probe use the new one
                node.backend = attrs.evolve(node.backend, credentials=backend.credentials)
        added = await self.join([b for i, b in wanted.items() if i not in self.nodes])
        removed: list[str] = []
        if prune:
            stale = [i for i in self.nodes if i not in wanted and i not in self.pinned]
            removed = [entry["id"] for entry in self.leave(stale)]
        return {"added": added, "removed": removed}

    def snapshot(self, now: float) -> dict[str, list[dict[str, Any]]]:
        """The member and the draining nodes as plain data, each with its URL."""
        return {
            "nodes": [{**n.snapshot(now), "url": base_url(n.backend)}
                      for n in self.nodes.values()],
            "draining": [{**n.snapshot(now), "health": "removed", "url": base_url(n.backend)}
                         for n in self.draining.values()],
        }
