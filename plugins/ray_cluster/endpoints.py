"""`GET /sollol/ray`: the Ray members and their state (admin key), for `sollol ray status`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sollol.models import GatewayEndpoint, HttpReply, HttpRequest

if TYPE_CHECKING:
    from .service import RayMembers

PATH = "/sollol/ray"


def endpoints(service: Callable[[], RayMembers | None]) -> list[GatewayEndpoint]:
    async def status(_request: HttpRequest) -> HttpReply:
        running = service()
        if running is None:
            return HttpReply(200, {"enabled": False, "members": [], "nodes": [],
                                   "hint": "set ray_address to run rpc-servers on Ray"})
        return HttpReply(200, {"enabled": True, **running.report()})

    return [GatewayEndpoint(PATH, ("GET",), status)]
