"""Model names as clients write them, and the one canonical form SOLLOL keys them by.

"llama3", "llama3:latest", "library/llama3" and "Registry.Ollama.AI/library/llama3" name one
model; every place that keeps something per model (coordinators, caches, logs) keys it by
`canonical_model(name)` so all spellings share one entry. The name a client wrote is still what
is sent to a node (an OpenAI-compatible server knows no `:latest`).
"""

from __future__ import annotations

import difflib
import posixpath
from collections.abc import Iterable

from sollol.errors import RequestError

MAX_MODEL_NAME = 512
"""Longest model name accepted (Ollama's own parts are at most 350 + 80 + 80 + 80 characters)."""
DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"


def check_model_name(name: str) -> str:
    """`name`, or RequestError when it is too long or holds control characters."""
    if len(name) > MAX_MODEL_NAME:
        raise RequestError(f"model name is {len(name)} characters long; at most "
                           f"{MAX_MODEL_NAME} are allowed")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise RequestError(f"model name {name[:80]!r} contains control characters")
    return name


def is_file_name(name: str) -> bool:
    """True when `name` spells a GGUF file (a path, or a file name ending in .gguf)."""
    return name.startswith(("/", ".", "~")) or name.lower().endswith(".gguf")


def canonical_model(name: str) -> str:
    """The one spelling of `name` that things are keyed by: default registry host, `library/`
    namespace and `:latest` tag dropped, the host in lower case ("llama3"); a file name is only
    normalised."""
    while True:  # one step can expose another default part ("library/library/m"): to a fixpoint
        step = _canonical_step(name)
        if step == name:
            return step
        name = step


def _canonical_step(name: str) -> str:
    name = name.strip()
    if is_file_name(name):
        return posixpath.normpath(name) if "/" in name else name
    parts = name.split("/")
    host = ""
    if len(parts) >= 3 or (len(parts) == 2 and _looks_like_host(parts[0])):
        host, parts = parts[0].lower(), parts[1:]
    if host == DEFAULT_HOST:
        host = ""
    if not host and len(parts) == 2 and parts[0].lower() == DEFAULT_NAMESPACE:
        parts = parts[1:]
    while parts[-1].endswith(f":{DEFAULT_TAG}"):
        parts[-1] = parts[-1].removesuffix(f":{DEFAULT_TAG}")
    return "/".join([host, *parts] if host else parts).strip()


def canonical(name: str) -> str:
    """The full spelling of `name`: `canonical_model` with the default tag ("llama3:latest")."""
    short = canonical_model(name)
    last = short.rsplit("/", 1)[-1]
    if is_file_name(short) or ":" in last or "@" in last:
        return short
    return f"{short}:{DEFAULT_TAG}"


def spellings(name: str) -> frozenset[str]:
    """The spellings a node may list one model under: as written, with and without `:latest`."""
    return frozenset({name.strip(), canonical(name), canonical_model(name)})


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
    name = name[:MAX_MODEL_NAME]  # difflib's cost grows with the product of the lengths
    short = {canonical_model(k).removesuffix(":latest"): k for k in known}
    wanted = canonical_model(name).removesuffix(":latest")
    matches = difflib.get_close_matches(wanted, list(short), n=limit, cutoff=0.5)
    bare = wanted.split(":", 1)[0]
    for candidate in short:  # the same model under another tag is always worth naming
        if candidate.split(":", 1)[0] == bare and candidate not in matches:
            matches.append(candidate)
    return matches[:limit]


def same_model(a: str, b: str) -> bool:
    """True when two names denote the same model."""
    return a == b or canonical_model(a) == canonical_model(b)


def _looks_like_host(part: str) -> bool:
    return "." in part or ":" in part or part.lower() == "localhost"
