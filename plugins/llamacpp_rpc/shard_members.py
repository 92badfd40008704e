"""rpc-servers joining and leaving a running sharding route.

A removed rpc-server is forgotten at once; a coordinator that uses it drains (its requests in
flight finish, it takes no new ones), then stops, and the next request for its model starts a
coordinator on the remaining rpc-servers. rpc-servers an operator added survive re-discovery
and reloads; ones an operator removed are not re-discovered until added again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Any

import attrs

from sollol.errors import BackendNotFound, RequestError
from sollol.models import Backend, join_host_port, split_host_port

from .rpc_discovery import KIND, backend_for
from .shards import ShardRegistry

ADMIN = "admin"
DEFAULT_PORT = 50052
Drain = Callable[[list[str], str], Awaitable[list[str]]]
"""(addresses leaving, why) -> ids of the coordinators that drain (the supervisor's `drain`)."""


def parse_address(text: str) -> str:
    """host:port of an rpc-server (the port defaults to 50052); RequestError when malformed."""
    raw = text.strip().removeprefix(f"{KIND}:")
    try:
        host, port = split_host_port(raw, default_port=DEFAULT_PORT)
    except ValueError as exc:
        raise RequestError(f"rpc-server {text!r}: {exc}") from None
    if not host:
        raise RequestError(f"rpc-server {text!r}: no host (expected host:port)")
    return join_host_port(host, port)


@attrs.define
class ShardMembers:
    """Which rpc-servers the route shards over: owns the registry, and remembers what an operator
    added or removed by hand."""

    registry: ShardRegistry
    drain: Drain
    joined: Callable[[], None]
    """Called when rpc-servers joined (requests waiting for room look again)."""
    pinned: set[str] = attrs.field(factory=set)
    """rpc-servers an operator added (kept through re-discovery and reloads)."""
    removed: set[str] = attrs.field(factory=set)
    """rpc-servers an operator removed (not re-discovered until added again)."""

    async def add(self, text: str) -> dict[str, Any]:
        address = parse_address(text)
        self.removed.discard(address)
        self.pinned.add(address)
        added = await self._join([backend_for(address, ADMIN)])
        shard = self.registry.shards[address]
        return {"added": [f"{KIND}:{a}" for a in added], "backend": shard.as_dict(),
                **({} if added else {"detail": f"{address} was already an rpc-server"})}

    async def remove(self, text: str) -> dict[str, Any]:
        address = parse_address(text)
        if address not in self.registry.shards:
            known = ", ".join(self.registry.shards) or "none"
            raise BackendNotFound(f"{text!r} is not an rpc-server of this gateway "
                                  f"(known: {known})")
        self.pinned.discard(address)
        self.removed.add(address)
        return {"removed": await self._leave([address], f"rpc-server {address} was removed")}

    async def sync(self, backends: Collection[Backend], *, prune: bool) -> dict[str, list[str]]:
        """Take the discovered rpc-servers (less those removed by hand); with `prune`, drop the
        ones no longer discovered (except those added by hand)."""
        wanted = {b.address: b for b in backends
                  if b.kind == KIND and b.address not in self.removed}
        added = await self._join(list(wanted.values()))
        removed: list[str] = []
        if prune:
            stale = [a for a in self.registry.shards if a not in wanted and a not in self.pinned]
            removed = [e["id"] for e in await self._leave(stale, "the config no longer lists it")]
        return {"added": [f"{KIND}:{a}" for a in added], "removed": removed}

    async def _join(self, backends: Collection[Backend]) -> list[str]:
        """Register rpc-servers and probe the new ones once; returns their addresses."""
        added = self.registry.update_backends(list(backends))
        for address in added:
            await self.registry.probe(self.registry.shards[address])
        if added:
            self.joined()
        return added

    async def _leave(self, addresses: Collection[str], why: str) -> list[dict[str, Any]]:
        gone = [a for a in addresses if self.registry.remove(a) is not None]
        drained = await self.drain(gone, why) if gone else []
        return [{"id": f"{KIND}:{a}", "address": a, "draining": drained} for a in gone]
