"""`rpc_fill_caches`: fill a coordinator's rpc-servers' caches from the gateway before it starts.

The work is `fill.fill` in a worker thread; this module gives it the coordinator's placement,
keeps its progress on the coordinator (status, `/sollol/state`), logs it, and turns every failure
into a warning: a fill that fails or guesses wrong only means cache misses in the load.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import fill

if TYPE_CHECKING:
    from .coordinator import Coordinator

log = logging.getLogger("sollol.sharding")
LOG_EVERY = 2.0
"""Seconds between progress lines in the log while a fill runs."""


async def fill_caches(coord: Coordinator, client_version: tuple[int, int, int] | None,
                      warn: Callable[[str], None],
                      filled: dict[tuple[Any, ...], frozenset[int]]) -> None:
    """Fill `coord`'s shards (all at once); progress in `coord.fill`; never raises.

    `filled` remembers (shard, model file, split) this gateway filled completely, with the
    hashes it put there, so a restart of the model on the same shards does not read and hash
    the model again.
    """
    plan = coord.plan
    coord.fill = run = fill.FillRun()
    shares = [float(s) for s in plan.tensor_split.split(",")]
    devices = [len(b.free) for b in plan.backends]
    started = time.monotonic()
    try:
        stat = coord.resolved.path.stat()
    except OSError as exc:
        warn(f"not filling the rpc-server caches for {coord.model!r}: {exc}")
        return
    key = {a: (a, str(coord.resolved.path), stat.st_size, stat.st_mtime_ns, plan.tensor_split,
               plan.gpu_layers) for a in plan.addresses}
    job = asyncio.ensure_future(asyncio.to_thread(
        fill.fill, coord.resolved.path, plan.addresses, devices, shares, plan.gpu_layers,
        run=run, client_version=client_version,
        skip={a for a in plan.addresses if key[a] in filled}))
    try:
        while not job.done():
            await asyncio.wait([job], timeout=LOG_EVERY)
            log.info("filling rpc-server caches for %s: %s", coord.model, summary(run))
        await job
    except asyncio.CancelledError:
        run.cancel()
        raise
    except Exception as exc:  # a fill never stops a load
        warn(f"filling the rpc-server caches for {coord.model!r} failed ({exc}); "
             "loading without")
        return
    filled.update({key[a]: frozenset(s.hashes) for a, s in run.shards.items()
                   if s.state == "done"})
    for address, shard in run.shards.items():
        if key[address] in filled:
            shard.hashes = set(filled[key[address]])

    def forget(address: str) -> None:  # the shard lost what we filled: fill it again next time
        filled.pop(key[address], None)

    coord.on_cache_miss = forget
    failed = [f"{a}: {s.state}" for a, s in run.shards.items() if not s.state.startswith("done")]
    if failed:
        warn(f"filling the rpc-server caches for {coord.model!r}: " + "; ".join(failed))
    log.info("filled rpc-server caches for %s in %.1fs: %s", coord.model,
             time.monotonic() - started, summary(run))


def summary(run: fill.FillRun) -> str:
    """One line: per shard, tensors done of total, MiB sent, state."""
    return ", ".join(f"{a} {s.done}/{s.tensors} tensors, {s.sent_bytes / 2**20:.0f} MiB sent, "
                     f"{s.state}" for a, s in run.shards.items()) or "nothing to fill"
