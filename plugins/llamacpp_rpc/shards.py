"""The registry of rpc-servers: health by RPC probe while free, by its coordinator while held."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import attrs

from sollol.models import Backend, BackendState, ShardOffer

from . import attached, rpc_devices
from .rpc_probe import (
    DeviceMemory,
    ProbeError,
    ProtocolMismatch,
    Version,
    compatible,
    format_version,
    probe,
)

log = logging.getLogger("sollol.sharding")


RECENT_PROBES = 5
"""A link's latency is the smallest round trip of this many recent probes."""
SETTLED_PROBES = 3
"""An rpc-server that came back is judged for a move after this many answered probes."""


@attrs.define
class Shard:
    """One rpc-server and what we last learned about it."""

    backend: Backend
    healthy: bool = False
    detail: str = "not probed yet"
    version: Version | None = None
    devices: tuple[DeviceMemory, ...] = ()
    device_names: tuple[str, ...] = ()
    """llama.cpp's names of its devices (`Vulkan0`), where `sollol rpc serve` recorded them."""
    checked_at: float | None = None
    incompatible: str | None = None
    owner: str | None = None
    """The coordinator id holding this rpc-server; while set, it is never probed."""
    latency_s: float | None = None
    """The smallest round trip of its recent probes (a probe that waited for a busy host's CPU
    says nothing about the link); None until one answered."""
    answered: int = 0
    """Probes answered in a row (0 after one failed): a server that just came back is trusted
    with a move once it has answered SETTLED_PROBES of them."""
    recent: list[float] = attrs.field(factory=list)
    lock: asyncio.Lock = attrs.field(factory=asyncio.Lock)

    @property
    def address(self) -> str:
        return self.backend.address

    @property
    def usable(self) -> bool:
        return self.healthy and self.incompatible is None and self.owner is None

    def offer(self, limit: int | None = None, reserve: int = 0) -> ShardOffer:
        """What it can take: free memory per device, at most `limit` in all (spread over the
        devices like their free memory), less `reserve` per device."""
        free = [d.free for d in self.devices]
        total = sum(free)
        if limit is not None and total > limit:
            free = [f * limit // total for f in free]
        return ShardOffer(self.address, tuple(max(0, f - reserve) for f in free),
                          self.latency_s, devices=self.device_names
                          if len(self.device_names) == len(self.devices) else ())

    def names(self) -> tuple[str, ...]:
        """A name per device: llama.cpp's where known, else `device N`."""
        known = self.device_names
        return tuple(known[i] if i < len(known) else f"device {i}"
                     for i in range(len(self.devices)))

    def state(self, in_flight: int = 0, loaded: frozenset[str] = frozenset()) -> BackendState:
        return BackendState(
            self.backend, healthy=self.healthy and self.incompatible is None,
            loaded=loaded, in_flight=in_flight, detail=self.incompatible or self.detail,
            memory_total=sum(d.total for d in self.devices) if self.devices else None,
            memory_free=sum(d.free for d in self.devices) if self.devices else None,
            devices=self.device_names if len(self.device_names) == len(self.devices) else (),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.backend.id, "address": self.address, "healthy": self.healthy,
            "member": self.backend.labels.get("member"),
            "detail": self.detail, "version": format_version(self.version),
            "incompatible": self.incompatible, "attached_to": self.owner,
            "checked_at": self.checked_at,
            "devices": [{**attrs.asdict(d), "name": name}
                        for d, name in zip(self.devices, self.names(), strict=True)],
            "device_names": list(self.device_names),
            "memory_free": sum(d.free for d in self.devices) if self.devices else None,
            "memory_total": sum(d.total for d in self.devices) if self.devices else None,
            "probe_latency_s": self.latency_s,
        }


@attrs.define
class ShardRegistry:
    """All rpc-servers of the route, keyed by address."""

    timeout: float
    client_version: Version | None = None
    shards: dict[str, Shard] = attrs.field(factory=dict)
    limits: dict[str, int] = attrs.field(factory=dict)
    """Bytes the operator lets each rpc-server give (`rpc_backend_memory`), by address."""
    reserve: int = 0
    """Bytes left free on every device (`rpc_memory_reserve`)."""
    names_dir: Path | None = None
    """Where `sollol rpc serve` on this machine records its devices' names."""

    def offer(self, shard: Shard) -> ShardOffer:
        return shard.offer(self.limits.get(shard.address), self.reserve)

    def update_backends(self, backends: list[Backend]) -> list[str]:
        """Add the backends not known yet; returns their addresses."""
        new = [b for b in backends if b.address not in self.shards]
        for backend in new:
            self.shards[backend.address] = Shard(backend)
        return [b.address for b in new]

    def remove(self, address: str) -> Shard | None:
        """Forget an rpc-server (its coordinator, if any, is drained by the supervisor)."""
        return self.shards.pop(address, None)

    async def probe(self, shard: Shard) -> None:
        """Probe one free rpc-server; a held one is skipped (its coordinator speaks for it)."""
        async with shard.lock:
            if shard.owner is not None or attached.owner_of(shard.address):
                return
            try:
                result = await asyncio.to_thread(probe, shard.backend.host, shard.backend.port,
                                                 self.timeout)
            except ProtocolMismatch as exc:
                shard.answered, shard.recent = 0, []
                self._mark(shard, False, str(exc), exc.version)
                shard.incompatible = self._incompatibility(exc.version)
                return
            except ProbeError as exc:
                shard.answered, shard.recent = 0, []
                self._mark(shard, False, str(exc), shard.version)
                return
            shard.devices = result.devices
            if self.names_dir is not None:
                shard.device_names = rpc_devices.names(self.names_dir, shard.address)
            shard.answered += 1
            shard.recent = [*shard.recent[-(RECENT_PROBES - 1):], result.latency_s]
            shard.latency_s = min(shard.recent)
            self._mark(shard, True, f"RPC {result.version_text}, {len(result.devices)} "
                                    f"device(s), probe {result.latency_s * 1000:.1f} ms",
                       result.version)
            shard.incompatible = self._incompatibility(result.version)

    async def probe_free(self) -> None:
        """Probe every rpc-server no coordinator of ours holds, in parallel."""
        free = [s for s in self.shards.values() if s.owner is None]
        await asyncio.gather(*(self.probe(s) for s in free))

    def _mark(self, shard: Shard, healthy: bool, detail: str, version: Version | None) -> None:
        if shard.healthy and not healthy:
            log.warning("rpc-server %s is down: %s", shard.address, detail)
        elif not shard.healthy and healthy and shard.checked_at is not None:
            log.info("rpc-server %s is back: %s", shard.address, detail)
        shard.healthy, shard.detail, shard.version = healthy, detail, version
        shard.checked_at = time.time()

    def _incompatibility(self, version: Version | None) -> str | None:
        if self.client_version is None:
            return None
        if version is None or not compatible(version, self.client_version):
            return (f"incompatible: rpc-server speaks RPC protocol {format_version(version)}, "
                    f"the coordinator (llama-server) speaks {format_version(self.client_version)}")
        return None

    def hold(self, addresses: list[str], owner: str) -> None:
        for address in addresses:
            self.shards[address].owner = owner
        attached.attach(addresses, owner)

    def release(self, addresses: list[str]) -> None:
        attached.detach(addresses)
        for address in addresses:
            if address in self.shards:
                self.shards[address].owner = None
