"""Model-name spellings: "llama3" and "llama3:latest" are one model (Ollama's rule)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def canonical(name: str) -> str:
    """The full spelling: no tag means `:latest` (a tag is after the last `/`)."""
    name = name.strip()
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def spellings(name: str) -> frozenset[str]:
    """Every spelling of one model name: with and without `:latest`."""
    full = canonical(name)
    return frozenset({name.strip(), full, full.removesuffix(":latest")})


def is_path(name: str) -> bool:
    """A GGUF file path rather than a model name (served, but never listed as a model)."""
    text = name.strip()
    return (text.startswith(("/", "./", "../", "~")) or text.lower().endswith(".gguf")
            or "\\" in text)


def stem(name: str) -> str:
    """A model name for a path-named model: the file name without `.gguf`."""
    last = name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return last[:-5] if last.lower().endswith(".gguf") else last


def closest(name: str, known: Iterable[str], limit: int = 3) -> list[str]:
    """Up to `limit` known names that look like `name` (for "did you mean")."""
    short = {canonical(k).removesuffix(":latest"): k for k in known}
    wanted = canonical(name).removesuffix(":latest")
    matches = difflib.get_close_matches(wanted, list(short), n=limit, cutoff=0.5)
    bare = wanted.split(":", 1)[0]
    for candidate in short:  # the same model under another tag is always worth naming
        if candidate.split(":", 1)[0] == bare and candidate not in matches:
            matches.append(candidate)
    return matches[:limit]
