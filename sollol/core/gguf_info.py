"""Read what routing needs from a GGUF file's header: size, layers, parameters, KV-cache cost.

Only the header is parsed, from a memory map: the tensor data of a multi-GB file is never read.
The header is walked here rather than with `gguf.GGUFReader`, which builds a numpy array per
vocabulary string and takes seconds on a 150k-token vocabulary; the constants come from `gguf`.
"""

from __future__ import annotations

import math
import mmap
import os
import stat
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, LlamaFileType

from sollol.errors import ModelFileError
from sollol.models import ModelInfo

MAGIC = b"GGUF"
KEEP_ARRAY = 4096
"""Numeric arrays up to this length are kept (per-layer head counts); longer ones are skipped."""
_SCALARS = {
    GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h", GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?", GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d",
}
KV_CACHE_BYTES = 2
"""llama.cpp's default KV cache type is f16."""
# Limits on what a header may declare: a hostile or corrupt file must fail fast with a clear
# error, never make the reader allocate in proportion to a count it wrote (real files stay
# far below these: ~50 metadata keys, a few thousand tensors, 4 dimensions, chat templates of
# a few KiB).
MAX_KEYS = 65_536
MAX_TENSORS = 1_000_000
MAX_DIMS = 8
MAX_STRING = 16 * 1024 * 1024
MAX_NESTING = 8


@attrs.frozen
class SkippedArray:
    """A metadata array too long to keep (a vocabulary): its element type and length."""

    type: GGUFValueType
    count: int


@attrs.frozen
class TensorInfo:
    """One tensor's name, shape (GGUF order: innermost dimension first) and storage type."""

    name: str
    shape: tuple[int, ...]
    type: int

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int | None:
        try:
            block, size = GGML_QUANT_SIZES[GGMLQuantizationType(self.type)]
        except (KeyError, ValueError):
            return None
        return self.elements // block * size


@attrs.frozen
class GGUFHeader:
    """A GGUF file's version, metadata and tensor table."""

    version: int
    metadata: Mapping[str, Any]
    tensors: tuple[TensorInfo, ...]


class _Cursor:
    def __init__(self, data: mmap.mmap | bytes, order: str) -> None:
        self.data, self.order, self.pos = data, order, 0

    def take(self, fmt: str) -> Any:
        fmt = self.order + fmt
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.take("Q")
        if self.pos + length > len(self.data):
            raise struct.error("string runs past the end of the file")
        if length > MAX_STRING:
            raise ValueError(f"a string of {length} bytes (the limit is {MAX_STRING})")
        raw = self.data[self.pos:self.pos + length]
        self.pos += length
        return bytes(raw).decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        length = self.take("Q")
        self.pos += length

    def value(self, kind: int, depth: int = 0) -> Any:
        kind = GGUFValueType(kind)
        if kind == GGUFValueType.STRING:
            return self.string()
        if kind == GGUFValueType.ARRAY:
            return self.array(depth + 1)
        return self.take(_SCALARS[kind])

    def array(self, depth: int = 1) -> Any:
        if depth > MAX_NESTING:
            raise ValueError(f"arrays nested more than {MAX_NESTING} deep")
        kind, count = GGUFValueType(self.take("I")), self.take("Q")
        # each element takes at least this many bytes: an absurd count fails at once
        smallest = (struct.calcsize(_SCALARS[kind]) if kind in _SCALARS
                    else 8 if kind == GGUFValueType.STRING else 12)
        if count * smallest > len(self.data) - self.pos:
            raise struct.error(f"an array of {count} elements runs past the end of the file")
        if kind in _SCALARS and count <= KEEP_ARRAY:
            return [self.take(_SCALARS[kind]) for _ in range(count)]
        if kind in _SCALARS:
            self.pos += struct.calcsize(_SCALARS[kind]) * count
        elif kind == GGUFValueType.STRING:
            for _ in range(count):
                self.skip_string()
        else:  # arrays of arrays: walk them without keeping anything
            for _ in range(count):
                self.value(kind, depth)
        if self.pos > len(self.data):
            raise struct.error("array runs past the end of the file")
        return SkippedArray(kind, count)


def read_header(path: Path) -> GGUFHeader:
    """Parse the metadata and tensor table of a GGUF file; raise ModelFileError if it is not one."""
    try:
        # never blocks: a FIFO or a device opens at once (O_NONBLOCK) and is refused unread
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ModelFileError(f"{path} is not a regular file")
            if handle.read(4) != MAGIC:
                raise ModelFileError(f"{path} is not a GGUF file (no GGUF magic)")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return _parse(data, path)
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc}") from None


def _parse(data: mmap.mmap, path: Path) -> GGUFHeader:
    if len(data) < 24:
        raise ModelFileError(f"{path}: truncated GGUF header ({len(data)} bytes)")
    (version,) = struct.unpack_from("<I", data, 4)
    order = "<"
    if version & 0xFFFF == 0:  # a big-endian file read as little-endian
        order, version = ">", struct.unpack_from(">I", data, 4)[0]
    if version not in (2, 3):
        raise ModelFileError(f"{path}: GGUF version {version} is not supported (2 or 3)")
    cursor = _Cursor(data, order)
    cursor.pos = 8
    try:
        tensor_count, kv_count = cursor.take("Q"), cursor.take("Q")
        if kv_count > MAX_KEYS or tensor_count > MAX_TENSORS:
            raise ValueError(f"{kv_count} metadata keys and {tensor_count} tensors declared "
                             f"(limits {MAX_KEYS} and {MAX_TENSORS})")
        metadata: dict[str, Any] = {}
        for _ in range(kv_count):
            key = cursor.string()
            metadata[key] = cursor.value(cursor.take("I"))
        tensors = []
        for _ in range(tensor_count):
            name = cursor.string()
            dims = cursor.take("I")
            if dims > MAX_DIMS:
                raise ValueError(f"tensor {name[:80]!r} has {dims} dimensions")
            shape = tuple(cursor.take("Q") for _ in range(dims))
            kind = cursor.take("I")
            cursor.take("Q")  # data offset
            tensors.append(TensorInfo(name, shape, kind))
    except (struct.error, ValueError, KeyError) as exc:
        raise ModelFileError(f"{path}: malformed GGUF header ({exc})") from None
    return GGUFHeader(version=version, metadata=metadata, tensors=tuple(tensors))


def read_model_info(path: Path, name: str | None = None) -> ModelInfo:
    """The routing facts of one GGUF file (see ModelInfo); cheap for files of any size."""
    path = Path(path)
    header = read_header(path)
    meta = header.metadata
    arch = meta.get("general.architecture")
    arch = arch if isinstance(arch, str) else None

    def arch_int(key: str) -> int | None:
        value = meta.get(f"{arch}.{key}") if arch else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    return ModelInfo(
        name=name or str(meta.get("general.name") or path.stem),
        file_size=path.stat().st_size,
        parameter_count=sum(t.elements for t in header.tensors),
        layer_count=arch_int("block_count"),
        quantization=quantization(header),
        context_length=arch_int("context_length"),
        embedding_length=arch_int("embedding_length"),
        architecture=arch,
        kv_bytes_per_token=kv_bytes_per_token(meta, arch),
        source="gguf",
    )


def quantization(header: GGUFHeader) -> str | None:
    """The file type's name ("Q4_0", "F16"), else the type holding most of the weights."""
    file_type = header.metadata.get("general.file_type")
    if isinstance(file_type, int):
        try:
            return LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    weights: dict[int, int] = {}
    for tensor in header.tensors:
        weights[tensor.type] = weights.get(tensor.type, 0) + tensor.elements
    if not weights:
        return None
    kind = max(weights, key=weights.__getitem__)
    try:
        return GGMLQuantizationType(kind).name
    except ValueError:
        return f"type {kind}"


def kv_bytes_per_token(meta: Mapping[str, Any], arch: str | None) -> int | None:
    """Bytes of f16 K and V cache one token takes, over all layers (None if unknown)."""
    if arch is None:
        return None
    layers = meta.get(f"{arch}.block_count")
    heads = meta.get(f"{arch}.attention.head_count")
    embedding = meta.get(f"{arch}.embedding_length")
    if not isinstance(layers, int) or not layers:
        return None
    heads_kv = meta.get(f"{arch}.attention.head_count_kv", heads)
    per_layer_heads = _per_layer(heads, layers)
    per_layer_kv = _per_layer(heads_kv, layers)
    if per_layer_heads is None or per_layer_kv is None:
        return None
    total = 0
    for n_head, n_kv in zip(per_layer_heads, per_layer_kv, strict=True):
        if not n_head or not n_kv:
            continue  # a layer without attention (recurrent or hybrid models)
        default_dim = embedding // n_head if isinstance(embedding, int) else None
        k_dim = meta.get(f"{arch}.attention.key_length", default_dim)
        v_dim = meta.get(f"{arch}.attention.value_length", default_dim)
        if not isinstance(k_dim, int) or not isinstance(v_dim, int):
            return None
        total += n_kv * (k_dim + v_dim) * KV_CACHE_BYTES
    return total


def _per_layer(value: Any, layers: int) -> list[int] | None:
    if isinstance(value, int):
        return [value] * layers
    if isinstance(value, list) and len(value) == layers and all(isinstance(v, int) for v in value):
        return value
    return None
