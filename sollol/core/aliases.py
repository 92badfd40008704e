"""Public model names (`model_aliases`) and models to try instead (`model_fallbacks`).

```toml
[model_aliases]
fast = "llama3.2:1b"                                  # a public name for a model
big = { model = "llama3.1:70b", route = "sharding" }  # ... on one route
gpu = { model = "qwen2.5:7b", nodes = ["10.0.0.5:11434"] }  # ... on some pool nodes

[model_fallbacks]
"llama3.1:70b" = ["qwen2.5:32b", "llama3.2:1b"]       # tried in order, before the first byte
```
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from sollol.core.names import canonical

ROUTES = ("pool", "sharding")


@attrs.frozen
class Alias:
    """What a public model name stands for."""

    name: str
    model: str
    route: str | None = None
    nodes: tuple[str, ...] = ()


def check_aliases(value: Any) -> dict[str, Any]:
    """Validate `model_aliases` at load time; raises ValueError(expected) when malformed."""
    expected = ('a table of public name = "model" or {model = "...", route = "pool" or '
                '"sharding", nodes = ["host:port", ...]}')
    if not isinstance(value, Mapping):
        raise ValueError(expected)
    out: dict[str, Any] = {}
    for name, target in value.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(expected)
        if isinstance(target, str) and target.strip():
            out[name] = target.strip()
            continue
        if not isinstance(target, Mapping) or not isinstance(target.get("model"), str):
            raise ValueError(f"{expected} (entry {name!r})")
        unknown = set(target) - {"model", "route", "nodes"}
        if unknown:
            raise ValueError(f"{expected} (entry {name!r} has unknown keys: "
                             f"{', '.join(sorted(unknown))})")
        route = target.get("route")
        if route is not None and route not in ROUTES:
            raise ValueError(f"{expected} (entry {name!r}: route {route!r})")
        nodes = target.get("nodes", [])
        if not isinstance(nodes, list) or not all(isinstance(n, str) and n for n in nodes):
            raise ValueError(f"{expected} (entry {name!r}: nodes must be a list of addresses)")
        if nodes and route == "sharding":
            raise ValueError(f"{expected} (entry {name!r}: nodes are pool nodes, not sharding)")
        out[name] = dict(target)
    for name in out:
        if canonical(_target(out[name])) in {canonical(n) for n in out}:
            raise ValueError(f"{expected} (alias {name!r} points at another alias)")
    return out


def check_fallbacks(value: Any) -> dict[str, list[str]]:
    """Validate `model_fallbacks`: model = [models to try, in order]."""
    expected = 'a table of model = ["fallback model", ...]'
    if not isinstance(value, Mapping):
        raise ValueError(expected)
    out: dict[str, list[str]] = {}
    for name, chain in value.items():
        if isinstance(chain, str):
            chain = [chain]
        if not isinstance(chain, list) or not all(isinstance(c, str) and c for c in chain):
            raise ValueError(f"{expected} (entry {name!r})")
        if canonical(name) in {canonical(c) for c in chain}:
            raise ValueError(f"{expected} (entry {name!r} falls back to itself)")
        out[str(name)] = list(chain)
    return out


def _target(entry: Any) -> str:
    return entry if isinstance(entry, str) else str(entry["model"])


def aliases(config: Mapping[str, Any] | Any) -> dict[str, Alias]:
    """Every alias by its canonical public name."""
    out: dict[str, Alias] = {}
    for name, entry in (config.get("model_aliases") or {}).items():
        if isinstance(entry, str):
            out[canonical(name)] = Alias(name, entry)
        else:
            out[canonical(name)] = Alias(name, entry["model"], entry.get("route"),
                                         tuple(entry.get("nodes") or ()))
    return out


def fallbacks(config: Mapping[str, Any] | Any, model: str) -> list[str]:
    """The models to try after `model`, in order (spelling-insensitive)."""
    table = config.get("model_fallbacks") or {}
    wanted = canonical(model)
    for name, chain in table.items():
        if canonical(name) == wanted:
            return list(chain)
    return []


@attrs.frozen
class Target:
    """One model to try for a request: the name asked for, the model it means, its alias."""

    name: str
    model: str
    alias: Alias | None = None


def targets(config: Mapping[str, Any] | Any, model: str) -> list[Target]:
    """The models to try for a request naming `model`: itself (through its alias, if it is
    one), then its fallbacks (or its alias target's), each through its own alias."""
    table = aliases(config)

    def target(name: str) -> Target:
        alias = table.get(canonical(name))
        return Target(name, alias.model if alias else name, alias)

    first = target(model)
    chain = fallbacks(config, model) or fallbacks(config, first.model)
    out = [first]
    for name in chain:
        candidate = target(name)
        if all(canonical(t.model) != canonical(candidate.model) for t in out):
            out.append(candidate)
    return out
