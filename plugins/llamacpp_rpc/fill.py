"""Fill the tensor caches of rpc-servers from the gateway, all shards at once, before a load.

llama-server sends the weights to one rpc-server after another; the links to the shards could
carry them all at the same time. So before a coordinator's first load (`rpc_fill_caches`), the
gateway sends each rpc-server started with `-c` the tensors over 10 MiB that it will hold, one
connection per shard, in parallel (see `rpc_wire`). The coordinator then sends hashes for them.

Which tensors a shard holds follows llama.cpp's own rule (src/llama-model.cpp): layers 0..n
(the output layer is layer n) are cut at the cumulative `--tensor-split` fractions, computed in
float32; the input layer (`token_embd`) stays on the coordinator. The cache is content-addressed,
so a wrong guess costs a cache miss, never a wrong weight.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs

from .rpc_wire import Connection, WireError, flat_tensor
from .seed import fnv1a_64
from .tensors import big_tensors, block_count


@attrs.define
class ShardFill:
    """Progress of filling one rpc-server's cache (read by status while it runs)."""

    address: str
    tensors: int = 0
    bytes: int = 0
    done: int = 0
    present: int = 0
    sent_bytes: int = 0
    state: str = "waiting"
    """waiting, filling, done, skipped (why) or failed (why)."""
    seconds: float = 0.0
    hashes: set[int] = attrs.field(factory=set)
    """Hashes of the tensors now in its cache (the write-behind relay forwards those)."""

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self, filter=lambda a, _v: a.name != "hashes")


@attrs.define
class FillRun:
    """One fill of several shards; `cancel()` stops it between chunks."""

    shards: dict[str, ShardFill] = attrs.field(factory=dict)
    stopped: threading.Event = attrs.field(factory=threading.Event)

    def cancel(self) -> None:
        self.stopped.set()

    def as_dict(self) -> dict[str, Any]:
        return {a: s.as_dict() for a, s in self.shards.items()}


def layer_devices(layers: int, shares: Sequence[float], gpu_layers: int) -> list[int | None]:
    """Device index (in `--rpc` order) of layers 0..layers (the last is the output layer), or
    None for the coordinator's own CPU: llama.cpp's get_layer_buft_list, in float32."""
    import numpy as np

    split = np.cumsum(np.asarray(shares, dtype=np.float32), dtype=np.float32)
    split = (split / split[-1]).astype(np.float32)
    start = max(layers + 1 - gpu_layers, 0)
    active = min(gpu_layers, layers + 1)
    out: list[int | None] = []
    for il in range(layers + 1):
        if il < start or il - start >= active:
            out.append(None)
            continue
        point = np.float32(il - start) / np.float32(active)
        out.append(min(int(np.searchsorted(split, point, side="right")), len(shares) - 1))
    return out


def assign(gguf: Path, addresses: Sequence[str], devices: Sequence[int],
           shares: Sequence[float], gpu_layers: int = 99) -> dict[str, list[Any]]:
    """The GGUF tensors over the threshold each rpc-server will hold (`devices`: how many
    devices each has; `shares`: the tensor split per device)."""
    from gguf import GGUFReader

    reader = GGUFReader(gguf)
    layers = block_count(reader)
    owner = [a for a, n in zip(addresses, devices, strict=True) for _ in range(n)]
    where = layer_devices(layers, shares, gpu_layers)
    out: dict[str, list[Any]] = {a: [] for a in addresses}
    for tensor, il in big_tensors(reader):
        device = None if il is None else where[min(il, layers)]
        if device is not None:
            out[owner[device]].append(tensor)
    return out


def fill(gguf: Path, addresses: Sequence[str], devices: Sequence[int], shares: Sequence[float],
         gpu_layers: int = 99, *, run: FillRun | None = None, timeout: float = 60.0,
         client_version: tuple[int, int, int] | None = None,
         skip: Collection[str] = ()) -> FillRun:
    """Fill every rpc-server's cache with its own tensors, all at once (but those in `skip`:
    filled earlier); never raises for a shard (its ShardFill says what went wrong)."""
    run = run or FillRun()
    plan = assign(gguf, addresses, devices, shares, gpu_layers)
    for address in addresses:
        run.shards[address] = ShardFill(address, len(plan[address]),
                                        sum(int(t.n_bytes) for t in plan[address]))
        if address in skip:
            run.shards[address].done = len(plan[address])
            run.shards[address].state = "done: filled earlier by this gateway"
    with ThreadPoolExecutor(max_workers=max(1, len(addresses))) as pool:
        for address in addresses:
            if address not in skip:
                pool.submit(_fill_one, address, plan[address], run, timeout, client_version)
    return run


def _fill_one(address: str, tensors: list[Any], run: FillRun, timeout: float,
              client_version: tuple[int, int, int] | None) -> None:
    progress = run.shards[address]
    started = time.monotonic()
    if not tensors:
        progress.state = "done"
        return
    progress.state = "filling"
    host, _, port = address.rpartition(":")
    try:
        conn = Connection(host.strip("[]"), int(port), timeout, client_version)
    except (WireError, ValueError) as exc:
        progress.state = f"failed: {exc}"
        return
    try:
        buffer, base = conn.alloc(max(int(t.n_bytes) for t in tensors))
        _send_all(conn, buffer, base, tensors, run, progress)
        conn.free(buffer)
        conn.close()
    except WireError as exc:
        progress.state = f"failed: {exc}"
        conn.close(reset=True)  # the server frees the buffer when the connection ends
    finally:
        progress.seconds = round(time.monotonic() - started, 2)


def _send_all(conn: Connection, buffer: int, base: int, tensors: list[Any], run: FillRun,
              progress: ShardFill) -> None:
    verified = False
    for tensor in tensors:
        data = tensor.data.tobytes()  # one tensor at a time, from the memory-mapped file
        wire = flat_tensor(buffer, base, len(data), tensor.name)
        digest = fnv1a_64(data)
        if conn.has(wire, digest):
            progress.present += 1
        else:
            conn.store(wire, memoryview(data), run.stopped.is_set, _adder(progress))
            if not verified and not conn.has(wire, digest):
                progress.state = "skipped: the rpc-server keeps no cache (start it with -c)"
                return
            verified = True
        progress.hashes.add(digest)
        progress.done += 1
    progress.state = "done"


def _adder(progress: ShardFill):
    def add(n: int) -> None:
        progress.sent_bytes += n
    return add
