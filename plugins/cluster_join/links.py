"""The gateway's tunnel endpoints, one per service of each member (tunnel.TunnelEndpoint).

An endpoint lives as long as its member is known with the same certificate: a member that
timed out and comes back keeps its local addresses (so the routes see the same backends), its
endpoints are only re-pointed when its address changed. A new certificate, a leave or a removal
closes them.

The endpoints run on an event loop of their own (`LoopThread`): shard traffic is many small
round trips and must never wait behind the gateway's HTTP work, and the tunnel is written for
asyncio's own transports (the gateway's loop may be uvloop).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from sollol.client.loop_thread import LoopThread

from .members import Member

T = TypeVar("T")

if TYPE_CHECKING:
    from .tunnel import TlsIdentity, TunnelEndpoint


def wanted_services(services: dict[str, Any]) -> list[str]:
    """The ALPN service names a member's `services` offer (rpc first, then pool nodes)."""
    from .tunnel import RPC_SERVICE, pool_service

    names = [RPC_SERVICE] if services.get("rpc") is not None else []
    return names + [pool_service(i) for i in range(len(services.get("pool") or []))]


@attrs.define
class MemberLinks:
    """Tunnel endpoints by member name and service."""

    identity: TlsIdentity
    link_timeout: float | None = None
    _endpoints: dict[str, dict[str, TunnelEndpoint]] = attrs.field(factory=dict)
    _pins: dict[str, str] = attrs.field(factory=dict)
    _thread: LoopThread | None = None

    async def _on_tunnel_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._thread is None:
            self._thread = LoopThread("sollol-join-tunnels")
        future = asyncio.run_coroutine_threadsafe(coro, self._thread.loop)
        return await asyncio.wrap_future(future)

    async def ensure(self, member: Member) -> dict[str, str]:
        """Endpoints for every service of `member`; returns {service: local address}."""
        from .tunnel import TunnelEndpoint

        assert member.pin is not None
        if self._pins.get(member.name) not in (None, member.pin):
            await self.drop(member.name)
        self._pins[member.name] = member.pin
        mine = self._endpoints.setdefault(member.name, {})
        wanted = wanted_services(member.services)
        for service in [s for s in mine if s not in wanted]:
            await self._on_tunnel_loop(mine.pop(service).stop())
        for service in wanted:
            endpoint = mine.get(service)
            if endpoint is None:
                extra = {} if self.link_timeout is None else {"link_timeout": self.link_timeout}
                endpoint = TunnelEndpoint(self.identity, member.host, member.tunnel_port,
                                          service, member.pin, **extra)
                mine[service] = await self._on_tunnel_loop(endpoint.start())
            else:  # read when the next connection opens
                await self._on_tunnel_loop(_repoint(endpoint, member.host, member.tunnel_port))
        return {service: endpoint.address for service, endpoint in mine.items()}

    def addresses(self, name: str) -> dict[str, str]:
        return {s: e.address for s, e in self._endpoints.get(name, {}).items()}

    async def drop(self, name: str) -> None:
        """Close a member's endpoints (its open connections end)."""
        self._pins.pop(name, None)
        for endpoint in self._endpoints.pop(name, {}).values():
            await self._on_tunnel_loop(endpoint.stop())

    async def close(self) -> None:
        for name in list(self._endpoints):
            await self.drop(name)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.stop)
            self._thread = None


async def _repoint(endpoint: TunnelEndpoint, host: str, port: int) -> None:
    endpoint.remote_host, endpoint.remote_port = host, port
