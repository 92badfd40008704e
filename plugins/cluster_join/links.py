"""The gateway's tunnel endpoints, one per service of each member (tunnel.TunnelEndpoint).

An endpoint lives as long as its member is known with the same certificate: a member that
timed out and comes back keeps its local addresses (so the routes see the same backends), its
endpoints are only re-pointed when its address changed. A new certificate, a leave or a removal
closes them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from .members import Member

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
            await mine.pop(service).stop()
        for service in wanted:
            endpoint = mine.get(service)
            if endpoint is None:
                extra = {} if self.link_timeout is None else {"link_timeout": self.link_timeout}
                endpoint = TunnelEndpoint(self.identity, member.host, member.tunnel_port,
                                          service, member.pin, **extra)
                mine[service] = await endpoint.start()
            else:  # read when the next connection opens
                endpoint.remote_host, endpoint.remote_port = member.host, member.tunnel_port
        return {service: endpoint.address for service, endpoint in mine.items()}

    def addresses(self, name: str) -> dict[str, str]:
        return {s: e.address for s, e in self._endpoints.get(name, {}).items()}

    async def drop(self, name: str) -> None:
        """Close a member's endpoints (its open connections end)."""
        self._pins.pop(name, None)
        for endpoint in self._endpoints.pop(name, {}).values():
            await endpoint.stop()

    async def close(self) -> None:
        for name in list(self._endpoints):
            await self.drop(name)
