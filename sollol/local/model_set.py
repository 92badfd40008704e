"""The local cluster's models: two generated GGUF files in an Ollama-layout store, made once.

The small one is served whole by the pool nodes; the large one is sharded over the rpc-servers.
They differ in parameter count, which the `size-threshold` policy reads from GGUF metadata, so
the router tells them apart by size, never by name.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import attrs

from sollol.testing.ollama_store import OllamaStoreBuilder, split_name
from sollol.testing.tiny_models import TinyModelSpec, make_tiny_model

# (a recorded context as long as the nodes may be given: clients read it from /api/show)
SMALL = TinyModelSpec(layers=8, dim=128, context=131072, seed=1,
                      name="sollol-demo-small")  # ~1.9M params, 4 MB
LARGE = TinyModelSpec(layers=16, dim=256, context=131072, seed=2,
                      name="sollol-demo-large")  # ~13.5M params, 27 MB
THRESHOLD = 5_000_000
"""Parameter count between the two models: below it the pool serves, at or above it sharding."""
MARKER = "models.json"
"""Written last: a store without it (or with other specs in it) is rebuilt."""


@attrs.frozen
class LocalModel:
    """One generated model: its name in the store and the blob holding its weights."""

    name: str
    path: Path
    parameters: int
    size: int
    layers: int


@attrs.frozen
class ModelSet:
    """The store and the two models in it."""

    store: Path
    small: LocalModel
    large: LocalModel
    created: bool
    """True when this call generated the files (False: reused from an earlier run)."""


def ensure_models(root: Path, *, say: Callable[[str], None] | None = None) -> ModelSet:
    """The models under `root/ollama-models`: reused when already built from these specs."""
    store = root / "ollama-models"
    specs = {"small": SMALL, "large": LARGE}
    key = _key(specs)
    found = _reuse(store, key)
    if found is not None:
        return found
    builder = OllamaStoreBuilder(store)
    made: dict[str, LocalModel] = {}
    for role, spec in specs.items():
        if say is not None:
            say(f"generating {spec.name} ({spec.layers} layers, {spec.parameter_count:,} "
                "parameters)")
        gguf = make_tiny_model(root / "gguf" / f"{spec.name}.gguf", spec=spec)
        builder.add_model(spec.name, gguf, params={"temperature": 0})
        gguf.unlink()  # the store's blob is a hard link to (or a copy of) it
        made[role] = _stored(store, spec)
    data = {"key": key, "models": {r: {**attrs.asdict(m), "path": str(m.path)}
                                   for r, m in made.items()}}
    (store / MARKER).write_text(json.dumps(data, indent=2) + "\n")
    return ModelSet(store, made["small"], made["large"], created=True)


def _key(specs: dict[str, TinyModelSpec]) -> str:
    text = json.dumps({r: attrs.asdict(s) for r, s in specs.items()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _stored(store: Path, spec: TinyModelSpec) -> LocalModel:
    """The model as the store holds it: the weights blob its manifest names."""
    manifest = json.loads(store.joinpath("manifests", *split_name(spec.name)).read_text())
    layer = next(x for x in manifest["layers"] if x["mediaType"].endswith(".model"))
    blob = store / "blobs" / layer["digest"].replace(":", "-")
    return LocalModel(spec.name, blob, spec.parameter_count, layer["size"], spec.layers)


def _reuse(store: Path, key: str) -> ModelSet | None:
    try:
        data = json.loads((store / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key:
        return None
    try:
        models = {role: LocalModel(**{**m, "path": Path(m["path"])})
                  for role, m in data["models"].items()}
    except (KeyError, TypeError):
        return None
    for model in models.values():
        if not model.path.is_file() or model.path.stat().st_size != model.size:
            return None
    return ModelSet(store, models["small"], models["large"], created=False)
