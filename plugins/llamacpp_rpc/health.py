"""`sollol_check_health` for rpc-servers: an RPC protocol probe, never on an attached backend."""

from __future__ import annotations

from sollol.models import Backend, HealthReport

from . import attached
from .rpc_probe import ProbeError, ProtocolMismatch, format_version, probe


def check(backend: Backend, timeout: float) -> HealthReport:
    """Probe one rpc-server: protocol version and memory per device."""
    owner = attached.owner_of(backend.address)
    if owner is not None:
        return HealthReport(backend.id, healthy=True,
                            detail=f"attached to {owner}; not probed (it serves one client)",
                            extra={"attached": owner})
    try:
        result = probe(backend.host, backend.port, timeout)
    except ProtocolMismatch as exc:
        return HealthReport(backend.id, healthy=False, detail=str(exc),
                            version=format_version(exc.version) if exc.version else None,
                            extra={"incompatible": True})
    except ProbeError as exc:
        return HealthReport(backend.id, healthy=False, detail=str(exc))
    devices = [{"index": d.index, "free": d.free, "total": d.total} for d in result.devices]
    return HealthReport(
        backend.id, healthy=True, latency_s=result.latency_s, version=result.version_text,
        memory_total=result.total, memory_free=result.free,
        detail=f"RPC {result.version_text}, {len(devices)} device(s)",
        extra={"devices": devices},
    )
