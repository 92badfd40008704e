"""Speculative decoding: a small draft model on the gateway machine proposes tokens that the
sharded model checks in one pass. The draft must share the target's vocabulary; this compares
the two GGUF headers' tokenizers before a coordinator starts."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import attrs

_FIELDS = ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.bos_token_id",
           "tokenizer.ggml.eos_token_id")


@attrs.frozen
class Tokenizer:
    """What decides whether two models read and write the same token ids."""

    fields: dict[str, Any]
    count: int
    digest: str
    """sha256 over every token's text, in id order."""


def tokenizer(path: Path) -> Tokenizer:
    """The tokenizer of a GGUF file (ValueError when it has none)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    tokens = reader.get_field("tokenizer.ggml.tokens")
    if tokens is None:
        raise ValueError(f"{path} has no tokenizer (tokenizer.ggml.tokens)")
    digest = hashlib.sha256()
    for index in tokens.data:
        digest.update(bytes(tokens.parts[index]))
        digest.update(b"\0")
    fields = {}
    for name in _FIELDS:
        field = reader.get_field(name)
        fields[name] = field.contents() if field is not None else None
    return Tokenizer(fields, len(tokens.data), digest.hexdigest())


def mismatch(target: Path, draft: Path) -> str:
    """Why `draft` cannot draft for `target` (their vocabularies differ), or ""."""
    try:
        mine, theirs = tokenizer(target), tokenizer(draft)
    except (OSError, ValueError) as exc:
        return f"cannot read a tokenizer: {exc}"
    if mine.count != theirs.count:
        return f"the target has {mine.count} tokens, the draft {theirs.count}"
    for name in _FIELDS:
        if mine.fields[name] != theirs.fields[name]:
            return f"{name} differs: {mine.fields[name]!r} vs {theirs.fields[name]!r}"
    if mine.digest != theirs.digest:
        return f"the {mine.count} token texts differ"
    return ""
