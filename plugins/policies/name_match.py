"""Model names as Ollama spells them: "llama3" and "llama3:latest" are the same model."""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from sollol.core.names import canonical as core_canonical

GLOB_CHARS = frozenset("*?[")


def canonical(name: str) -> str:
    """The full spelling, default tag included ("llama3:latest"; sollol.core.names.canonical)."""
    return core_canonical(name)


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
