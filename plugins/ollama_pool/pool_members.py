"""Nodes joining and leaving a running pool: by an operator, by re-discovery, by a config reload.

A removed node takes no new requests; those it is serving finish (it is kept aside, "draining",
until they do). Nodes an operator added stay through re-discovery and reloads until removed;
nodes an operator removed are not brought back by discovery until added again.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, Any

import attrs

from sollol.errors import BackendNotFound, RequestError
from sollol.models import Backend

from .node import Node
from .node_discovery import parse_node, pool_dialects

if TYPE_CHECKING:
    from .pool_route import PoolRoute

ADMIN = "admin"


def _node(route: PoolRoute, backend: Backend) -> Node:
    """The node for `backend`: the draining one if it comes back before it drained."""
    node = route.draining.pop(backend.id, None)
    if node is not None:
        return node
    memory = route.settings.memory
    declared = memory.get(backend.id, memory.get(backend.address))
    dialects = pool_dialects(route.cluster)
    return Node(backend, route.settings.concurrency, declared,
                api=dialects.get(backend.kind, backend.kind))


async def join(route: PoolRoute, backends: Collection[Backend]) -> list[str]:
    """Add nodes (probed once before they take requests); returns the ids added."""
    new = [_node(route, b) for b in backends if b.id not in route.nodes]
    for node in new:
        route.nodes[node.id] = node
    route.membership_changed()
    if new:
        await route.probe(new)
    return [n.id for n in new]


def leave(route: PoolRoute, ids: Iterable[str]) -> list[dict[str, Any]]:
    """Take nodes out: no new requests; in-flight ones finish. Returns what each had running."""
    gone = [route.nodes.pop(i) for i in ids if i in route.nodes]
    route.membership_changed()
    for node in gone:
        if node.in_flight:
            route.draining[node.id] = node
    route.wake(gone)  # requests pinned to them, or waiting for a model only they held, fail now
    return [{"id": n.id, "draining": n.in_flight} for n in gone]


async def add(route: PoolRoute, address: str) -> dict[str, Any]:
    """An operator adds a node by address (`host:port`, `http://...`, `openai://...`)."""
    try:
        backend = parse_node(address, ADMIN)
    except ValueError as exc:
        raise RequestError(str(exc)) from None
    route.removed.discard(backend.id)
    route.pinned.add(backend.id)
    added = await join(route, [backend])
    node = route.nodes[backend.id]
    return {"added": added, "node": node.snapshot(route.now()),
            **({} if added else {"detail": f"{backend.id} was already a pool node"})}


def remove(route: PoolRoute, ident: str) -> dict[str, Any]:
    """An operator removes a node by id, address or URL."""
    node_id = route.find(ident)
    if node_id is None:
        known = ", ".join(route.nodes) or "none"
        raise BackendNotFound(f"{ident!r} is not a pool node (nodes: {known})")
    route.pinned.discard(node_id)
    route.removed.add(node_id)
    return {"removed": leave(route, [node_id])}


async def sync(route: PoolRoute, backends: Collection[Backend], *,
               prune: bool) -> dict[str, list[str]]:
    """Bring the pool in line with a discovery result: add what is new; with `prune` (a config
    reload), also remove what is no longer found, except nodes an operator added."""
    kinds = set(route.kinds)
    wanted = {b.id: b for b in backends if b.kind in kinds and b.id not in route.removed}
    for ident, backend in wanted.items():
        node = route.nodes.get(ident)
        if node is not None and node.backend.credentials != backend.credentials:
            # a node's key changed in the config: the next request and probe use the new one
            node.backend = attrs.evolve(node.backend, credentials=backend.credentials)
    added = await join(route, [b for i, b in wanted.items() if i not in route.nodes])
    removed: list[str] = []
    if prune:
        stale = [i for i in route.nodes if i not in wanted and i not in route.pinned]
        removed = [entry["id"] for entry in leave(route, stale)]
    return {"added": added, "removed": removed}
