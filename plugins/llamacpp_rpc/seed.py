"""Fill an rpc-server's tensor cache from a GGUF file on the shard machine itself.

With `ggml-rpc-server -c`, llama-server first sends only a hash for every weight tensor over
10 MiB; the rpc-server loads the bytes from `<cache>/<hash>` when it has them, and only on a miss
are they sent over the network (and saved). The hash is 64-bit FNV-1a over the exact bytes of the
tensor, which llama.cpp's loader passes whole, straight from the GGUF file. So a shard machine
that has the model (its own Ollama store, often shared in a homelab) can write those files
itself: the coordinator's first load then moves hashes, not weights.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import attrs

HASH_THRESHOLD = 10 * 1024 * 1024
"""llama.cpp's threshold: smaller tensors are always sent, never looked up in the cache."""


@attrs.frozen
class SeedReport:
    """What seeding one model did."""

    gguf: Path
    cache: Path
    tensors: int
    """Tensors over the threshold (the ones llama.cpp looks up)."""
    written: int
    present: int
    bytes_written: int
    seconds: float

    def as_dict(self) -> dict[str, object]:
        return {**attrs.asdict(self), "gguf": str(self.gguf), "cache": str(self.cache)}


def fnv1a_64(data: bytes) -> int:
    """llama.cpp's tensor hash (FNV-1a, 64 bits), in C through the `fnv-c` package."""
    import fnv_c

    return fnv_c.fnv1a_64(data)


def rpc_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where `ggml-rpc-server -c` keeps its cache: `$LLAMA_CACHE/rpc`, else llama.cpp's user
    cache folder (`$XDG_CACHE_HOME/llama.cpp/rpc`, `~/.cache/llama.cpp/rpc`)."""
    env = os.environ if env is None else env
    if env.get("LLAMA_CACHE"):
        return Path(env["LLAMA_CACHE"]) / "rpc"
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "llama.cpp" / "rpc"


def seed(gguf: Path, cache: Path, say: Callable[[str], None] | None = None,
         layers: set[int] | None = None) -> SeedReport:
    """Write every weight tensor over the threshold to `cache/<fnv1a64 as 16 hex digits>`, or
    only those of `layers` (numbered as llama.cpp logs them: the output layer is the block
    count; the input layer never leaves the coordinator) when the shard's placement is known.

    Files already there with the right size are kept; new ones are written atomically, so an
    rpc-server reading the cache meanwhile never sees half a tensor.
    """
    from gguf import GGUFReader

    from .fill import big_tensors

    started = time.monotonic()
    cache.mkdir(parents=True, exist_ok=True)
    reader = GGUFReader(gguf)
    big = [t for t, il in big_tensors(reader) if layers is None or il in layers]
    written = present = size = 0
    for index, tensor in enumerate(big, 1):
        data = tensor.data.tobytes()
        if len(data) != int(tensor.n_bytes):
            msg = f"{gguf}: tensor {tensor.name} has {len(data)} bytes, expected {tensor.n_bytes}"
            raise ValueError(msg)
        target = cache / f"{fnv1a_64(data):016x}"
        if target.exists() and target.stat().st_size == len(data):
            present += 1
            continue
        partial = target.with_name(f".{target.name}.{os.getpid()}.part")
        partial.write_bytes(data)
        os.replace(partial, target)
        written += 1
        size += len(data)
        if say is not None and (index % 16 == 0 or index == len(big)):
            say(f"seeded {index}/{len(big)} tensors of {gguf.name}")
    return SeedReport(gguf, cache, len(big), written, present, size,
                      round(time.monotonic() - started, 2))
