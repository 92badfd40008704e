"""rpc-servers joining and leaving a running sharding route.

A removed rpc-server is forgotten at once; a coordinator that uses it drains (its requests in
flight finish, it takes no new ones), then stops, and the next request for its model starts a
coordinator on the remaining rpc-servers. rpc-servers an operator added survive re-discovery
and reloads; ones an operator removed are not re-discovered until added again.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from sollol.errors import BackendNotFound, RequestError
from sollol.models import Backend, join_host_port, split_host_port

from .rpc_discovery import KIND, backend_for

if TYPE_CHECKING:
    from .sharding_route import ShardingRoute

ADMIN = "admin"
DEFAULT_PORT = 50052


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


async def join(route: ShardingRoute, backends: Collection[Backend]) -> list[str]:
    """Register rpc-servers and probe the new ones once; returns their addresses."""
    added = route.shards.update_backends(list(backends))
    for address in added:
        await route.shards.probe(route.shards.shards[address])
    return added


async def leave(route: ShardingRoute, addresses: Collection[str],
                why: str) -> list[dict[str, Any]]:
    gone = [a for a in addresses if route.shards.remove(a) is not None]
    drained = await route.manager.drain(gone, why) if gone else []
    return [{"id": f"{KIND}:{a}", "address": a, "draining": drained} for a in gone]


async def add(route: ShardingRoute, text: str) -> dict[str, Any]:
    address = parse_address(text)
    route.removed.discard(address)
    route.pinned.add(address)
    added = await join(route, [backend_for(address, ADMIN)])
    shard = route.shards.shards[address]
    return {"added": [f"{KIND}:{a}" for a in added], "backend": shard.as_dict(),
            **({} if added else {"detail": f"{address} was already an rpc-server"})}


async def remove(route: ShardingRoute, text: str) -> dict[str, Any]:
    address = parse_address(text)
    if address not in route.shards.shards:
        known = ", ".join(route.shards.shards) or "none"
        raise BackendNotFound(f"{text!r} is not an rpc-server of this gateway (known: {known})")
    route.pinned.discard(address)
    route.removed.add(address)
    return {"removed": await leave(route, [address], f"rpc-server {address} was removed")}


async def sync(route: ShardingRoute, backends: Collection[Backend], *,
               prune: bool) -> dict[str, list[str]]:
    wanted = {b.address: b for b in backends if b.kind == KIND and b.address not in route.removed}
    added = await join(route, list(wanted.values()))
    removed: list[str] = []
    if prune:
        stale = [a for a in route.shards.shards if a not in wanted and a not in route.pinned]
        removed = [e["id"] for e in await leave(route, stale, "the config no longer lists it")]
    return {"added": [f"{KIND}:{a}" for a in added], "removed": removed}
