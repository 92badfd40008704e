"""Model names as Ollama spells them: "llama3" and "llama3:latest" are the same model."""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

GLOB_CHARS = frozenset("*?[")


def canonical(name: str) -> str:
    """`name` with Ollama's default tag added when it has none ("llama3" -> "llama3:latest").

    A path to a GGUF file is left alone: it names a file, not a store entry.
    """
    if "/" in name and (name.startswith((".", "/", "~")) or name.endswith(".gguf")):
        return name
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def same_model(a: str, b: str) -> bool:
    """True when two names denote the same model."""
    return a == b or canonical(a) == canonical(b)


def listed(model: str, names: Iterable[str]) -> bool:
    """True when `model` is among `names` (tag-insensitive as above)."""
    return any(same_model(model, name) for name in names)


def is_glob(pattern: str) -> bool:
    return any(ch in GLOB_CHARS for ch in pattern)


def glob_matches(pattern: str, model: str) -> bool:
    """Shell-style match against the name as written or with its default tag."""
    return fnmatchcase(model, pattern) or fnmatchcase(canonical(model), pattern)
