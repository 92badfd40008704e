"""Which rpc-servers a model goes on, how it is split, and whether it fits at all."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

GiB = 1024**3


@attrs.frozen
class Candidate:
    """An rpc-server that could take part: its address, version and free bytes per device."""

    address: str
    free: tuple[int, ...]

    @property
    def total_free(self) -> int:
        return sum(self.free)


@attrs.frozen
class Plan:
    """The backends a coordinator will use, its `--tensor-split`, and the memory numbers."""

    backends: tuple[Candidate, ...]
    needed: int
    available: int

    @property
    def addresses(self) -> list[str]:
        return [b.address for b in self.backends]

    @property
    def tensor_split(self) -> str:
        """Shares per RPC device in `--rpc` order, proportional to each device's free memory."""
        free = [f for b in self.backends for f in b.free]
        total = sum(free) or 1
        return ",".join(f"{f / total:.4f}" for f in free)


class DoesNotFit(Exception):
    """The model needs more memory than the usable rpc-servers have; carries the numbers."""

    def __init__(self, model: str, needed: int, candidates: Sequence[Candidate],
                 why: str = "") -> None:
        self.model, self.needed = model, needed
        self.available = sum(c.total_free for c in candidates)
        self.numbers: dict[str, Any] = {
            "needed_bytes": needed, "available_bytes": self.available,
            "backends": {c.address: c.total_free for c in candidates},
        }
        names = ", ".join(f"{c.address} {c.total_free / GiB:.2f} GiB" for c in candidates)
        where = f"the {len(candidates)} usable rpc-server(s) ({names})" if candidates \
            else "no usable rpc-server"
        super().__init__(f"model {model!r} needs ~{needed / GiB:.2f} GiB but {where} "
                         f"{'have' if candidates else 'has'} {self.available / GiB:.2f} GiB free"
                         + (f"; {why}" if why else ""))


def needed_bytes(file_size: int, kv_bytes_per_token: int | None, context: int) -> int:
    """Weights plus the KV cache for `context` tokens (small compute buffers not counted)."""
    return file_size + (kv_bytes_per_token or 0) * context


def make_plan(model: str, needed: int, candidates: Sequence[Candidate], why: str = "") -> Plan:
    """Use every usable candidate (the point of sharding is to spread); fail with the numbers."""
    usable = [c for c in candidates if c.total_free > 0]
    available = sum(c.total_free for c in usable)
    if not usable or available < needed:
        raise DoesNotFit(model, needed, usable, why)
    return Plan(tuple(usable), needed, available)
