"""What one link's write-behind relay has done: read by status and `/sollol/state` while a
model loads (the relay's threads write it; plain ints, read without a lock)."""

from __future__ import annotations

from typing import Any

import attrs


@attrs.define
class RelayStats:
    """What one link's relay has done (read by status while the model loads)."""

    upstream: str
    listen: str = ""
    accepted_bytes: int = 0
    """Bytes the coordinator wrote to the relay."""
    delivered_bytes: int = 0
    """Bytes the relay handed to the link (the kernel's send buffer, a few MiB, not counted)."""
    backlog_peak: int = 0
    """Most bytes waiting in the spool at one time."""
    set_tensors: int = 0
    hash_local: int = 0
    """SET_TENSOR_HASH answered "not cached" here, with a backlog, not forwarded."""
    hash_forwarded: int = 0
    hash_known: int = 0
    """SET_TENSOR_HASH of a tensor the gateway put in the cache: answered "cached" here at
    once, forwarded in order, the rpc-server's answer checked."""
    cache_misses: int = 0
    """Of those, how many the rpc-server did not have (the session then ends)."""
    sessions: int = 0
    connected: bool = False
    lost: str | None = None
    """Why the rpc-server's side of an open session ended (the coordinator must go), or None."""
    armed: bool = False
    """Whether keepalive and TCP_USER_TIMEOUT are on for the current upstream socket."""
    backlog_bytes: int = 0
    """Bytes waiting in the spool now."""

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)
