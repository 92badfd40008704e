"""A member's services as the routes' backends, and its devices as a memory reading."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sollol.core.live_memory import MemoryReading
from sollol.models import Backend

from .links import wanted_services
from .members import Member

RPC = "sollol-rpc"


def backend_id(name: str, service: str) -> str:
    """A member service's backend id: `rpc:NAME`, `NAME` (first pool node), `NAME/pool-N`."""
    if service == RPC:
        return f"rpc:{name}"
    index = int(service.rsplit("-", 1)[1])
    return name if index == 0 else f"{name}/pool-{index}"


def backend_ids(member: Member) -> list[str]:
    return [backend_id(member.name, s) for s in wanted_services(member.services)]


def member_backends(member: Member, addresses: Mapping[str, str]) -> list[Backend]:
    """Its services at their tunnel endpoints (`addresses`: service -> 127.0.0.1:port),
    labelled with its name."""
    pool = member.services.get("pool") or []
    labels = {"member": member.name, "joined": "true", "source": "join"}
    found = []
    for service, address in addresses.items():
        kind = "rpc" if service == RPC else pool[int(service.rsplit("-", 1)[1])]["kind"]
        found.append(Backend(backend_id(member.name, service), kind, address, labels=labels))
    return found


def memory_reading(devices: list[dict[str, Any]]) -> MemoryReading | None:
    """The memory a machine's pool nodes can use: its GPUs' (all devices when it has none)."""
    gpus = [d for d in devices if d["backend"].lower() not in ("cpu", "")] or devices
    if not gpus:
        return None
    return MemoryReading(sum(d["memory_total"] for d in gpus),
                         sum(d["memory_free"] for d in gpus),
                         tuple(d["name"] for d in gpus))
