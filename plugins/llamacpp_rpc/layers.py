"""Read llama-server's load log (`-v`) into a layer-distribution report per rpc-server."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

_USING = re.compile(r"using device (\S+) \(([^)]*)\)")
_LAYER = re.compile(r"load_tensors: layer\s+(\d+) assigned to device (\S+?),")
_MODEL_BUF = re.compile(r"load_tensors:\s+(\S+) model buffer size =\s+([\d.]+) MiB")
_KV_BUF = re.compile(r"llama_kv_cache:\s+(\S+) KV buffer size =\s+([\d.]+) MiB")
_BLOCKS = re.compile(r"n_layer\s+=\s+(\d+)")
_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers")
_ENDPOINT = re.compile(r"\[(.+)\]$")
COORDINATOR = "coordinator"
"""Where the input layer and anything not offloaded live: the llama-server host itself."""


@attrs.frozen
class BackendShare:
    """One rpc-server's part of a model: which layers, and MiB of weights and KV cache."""

    address: str
    layers: tuple[int, ...]
    weights_mib: float
    kv_mib: float

    def as_dict(self) -> dict[str, Any]:
        return {"address": self.address, "layers": len(self.layers),
                "layer_range": _ranges(self.layers), "weights_mib": round(self.weights_mib, 2),
                "kv_mib": round(self.kv_mib, 2)}


@attrs.frozen
class LayerReport:
    """How a model's layers are spread: per rpc-server, plus what stayed on the coordinator."""

    block_count: int | None
    offloaded: str | None
    shares: tuple[BackendShare, ...]
    coordinator: BackendShare
    output_device: str | None

    def share(self, address: str) -> BackendShare | None:
        return next((s for s in self.shares if s.address == address), None)

    layers_from: str = "log"
    """"log" (per-layer lines, with `-v`) or "kv-cache sizes" (inferred; see `parse`)."""

    def as_dict(self) -> dict[str, Any]:
        return {"block_count": self.block_count, "offloaded": self.offloaded,
                "layers_from": self.layers_from,
                "output_layer_on": self.output_device,
                "backends": [s.as_dict() for s in self.shares],
                "coordinator": self.coordinator.as_dict()}


def parse(lines: Iterable[str], backends: Iterable[str]) -> LayerReport:
    """Build the report from log lines; `backends` are the `--rpc` addresses in order.

    Per-layer placement is logged at debug level only (`-v`, which also logs ~20 lines per
    generated token). Without it, layer counts are inferred from each rpc-server's KV-cache
    buffer: every layer of a dense model holds the same KV size, and llama.cpp hands layers out
    in contiguous runs in `--rpc` order, the output layer going to the last device.
    """
    lines = _last_load(list(lines))
    backends = list(backends)
    devices: dict[str, str] = {}  # device name (RPC0, RPC1, ...) -> endpoint
    layers: dict[str, list[int]] = {}
    weights: dict[str, float] = {}
    kv: dict[str, float] = {}
    block_count = offloaded = None
    for line in lines:
        if m := _USING.search(line):
            devices[m.group(1)] = m.group(2)
        elif m := _LAYER.search(line):
            layers.setdefault(m.group(2), []).append(int(m.group(1)))
        elif m := _MODEL_BUF.search(line):
            key = _where(m.group(1))
            weights[key] = weights.get(key, 0.0) + float(m.group(2))
        elif m := _KV_BUF.search(line):
            key = _where(m.group(1))
            kv[key] = kv.get(key, 0.0) + float(m.group(2))
        elif (m := _BLOCKS.search(line)) and block_count is None:
            block_count = int(m.group(1))
        elif m := _OFFLOADED.search(line):
            offloaded = f"{m.group(1)}/{m.group(2)}"
    by_endpoint: dict[str, list[int]] = {}
    output_device = None
    for device, numbers in layers.items():
        where = devices.get(device, COORDINATOR)
        for number in numbers:
            if block_count is not None and number >= block_count:
                output_device = where  # llama.cpp counts the output layer as layer n_layer
            else:
                by_endpoint.setdefault(where, []).append(number)
    layers_from = "log"
    if not layers and block_count and sum(kv.get(a, 0.0) for a in backends) > 0:
        # layers kept on the coordinator (rpc_local_memory, -ngl below the layer count) are the
        # first ones, and their KV cache is in its CPU buffer
        by_endpoint, layers_from = (_from_kv(block_count, [COORDINATOR, *backends], kv),
                                    "kv-cache sizes")
        output_device = next((a for a in reversed(backends) if by_endpoint.get(a)), None)
    shares = tuple(_share(a, by_endpoint, weights, kv) for a in backends)
    return LayerReport(block_count, offloaded, shares,
                       _share(COORDINATOR, by_endpoint, weights, kv), output_device, layers_from)


def _last_load(lines: list[str]) -> list[str]:
    """The lines of the last model load: llama-server's `--fit` step loads the model once
    without allocating (all sizes 0) before the real load."""
    starts = [i for i, line in enumerate(lines) if _USING.search(line)
              and (i == 0 or not _USING.search(lines[i - 1]))]
    return lines[starts[-1]:] if starts else lines


def _from_kv(
    block_count: int, backends: list[str], kv: Mapping[str, float]
) -> dict[str, list[int]]:
    """Split `block_count` layers in proportion to KV MiB (largest remainder), in order."""
    total = sum(kv.get(a, 0.0) for a in backends)
    exact = [kv.get(a, 0.0) / total * block_count for a in backends]
    counts = [int(x) for x in exact]
    for i in sorted(range(len(exact)), key=lambda i: exact[i] - counts[i], reverse=True):
        if sum(counts) >= block_count:
            break
        counts[i] += 1
    result: dict[str, list[int]] = {}
    first = 0
    for address, count in zip(backends, counts, strict=True):
        result[address] = list(range(first, first + count))
        first += count
    return result


def _where(buffer_name: str) -> str:
    """`RPC0[127.0.0.1:50052]` -> the endpoint; `CPU`, `CPU_Mapped`, ... -> the coordinator."""
    m = _ENDPOINT.search(buffer_name)
    return m.group(1) if m else COORDINATOR


def _share(address: str, layers: Mapping[str, list[int]], weights: Mapping[str, float],
           kv: Mapping[str, float]) -> BackendShare:
    return BackendShare(address, tuple(sorted(layers.get(address, []))),
                        weights.get(address, 0.0), kv.get(address, 0.0))


def _ranges(numbers: Iterable[int]) -> str:
    """(0, 1, 2, 5) -> "0-2,5"."""
    parts: list[str] = []
    run: list[int] = []
    for n in sorted(numbers):
        if run and n == run[-1] + 1:
            run.append(n)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [n]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)
