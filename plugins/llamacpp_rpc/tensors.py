"""Which of a GGUF file's tensors llama.cpp looks up in an rpc-server's cache, and their layers."""

from __future__ import annotations

import re
from typing import Any

HASH_THRESHOLD = 10 * 1024 * 1024
"""llama.cpp's threshold: smaller tensors are always sent, never looked up in the cache."""
_BLOCK = re.compile(r"^blk\.(\d+)\.")


def block_count(reader: Any) -> int:
    """The model's repeating layers (its output layer is layer number block_count)."""
    return int(_field(reader, f"{_field(reader, 'general.architecture')}.block_count"))


def big_tensors(reader: Any) -> list[tuple[Any, int | None]]:
    """The tensors over the cache threshold, each with its layer (block_count: the output
    layer; None: the input layer, which stays on the coordinator)."""
    layers = block_count(reader)
    names = {t.name for t in reader.tensors}
    out: list[tuple[Any, int | None]] = []
    for tensor in reader.tensors:
        if int(tensor.n_bytes) <= HASH_THRESHOLD:
            continue
        if m := _BLOCK.match(tensor.name):
            out.append((tensor, int(m.group(1))))
        elif tensor.name.startswith("token_embd") and "output.weight" in names:
            out.append((tensor, None))
        else:  # the output layer (and a tied output's copy of token_embd)
            out.append((tensor, layers))
    return out


def parse_layers(text: str) -> set[int]:
    """`0-10,32` -> {0..10, 32}: layer numbers as llama.cpp logs them (the output layer is
    the block count); ValueError on anything else."""
    chosen: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()) or int(high or low) < int(low):
            raise ValueError(f"layer range {part!r}: use e.g. 0-10 or 0-10,32")
        chosen.update(range(int(low), int(high or low) + 1))
    if not chosen:
        raise ValueError("no layers named")
    return chosen


def _field(reader: Any, key: str) -> str | int:
    field = reader.fields.get(key)
    if field is None:
        raise ValueError(f"the GGUF file has no {key}")
    value = field.parts[field.data[0]]
    return bytes(value).decode() if field.types[0].name == "STRING" else int(value[0])
