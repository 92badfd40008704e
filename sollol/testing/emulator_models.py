"""The emulated node's model store: which models exist, which are loaded, and what they say.

Everything here is deterministic: the same model and prompt always give the same words and the
same embedding, so tests can assert on content.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import attrs

DEFAULT_KEEP_ALIVE = 300.0
_WORDS = (
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "while", "small", "models",
    "answer", "many", "questions", "about", "sky", "sea", "light", "wind", "rain", "snow", "time",
    "space", "stars", "rivers", "hills", "cities", "roads", "music", "art", "words", "numbers",
    "logic", "reason", "memory", "cache", "tokens", "nodes", "clusters", "shards", "pools",
    "engines", "servers", "threads", "cores", "bytes", "layers", "weights", "graphs", "vectors",
    "fields", "signals", "waves", "orbits", "planets",
)
_DURATION = re.compile(r"^(-?\d+(?:\.\d+)?)(ms|s|m|h)?$")


def full_name(name: str) -> str:
    """Ollama's canonical name: a missing tag means `latest` ("llama3" -> "llama3:latest")."""
    name = name.strip()
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


_iso_cache: tuple[int, str] = (0, "")


def iso_now() -> str:
    """An RFC 3339 timestamp like Ollama's `created_at` (formatted at most once a millisecond)."""
    global _iso_cache
    now = time.time()
    ms = int(now * 1000)
    if _iso_cache[0] != ms:
        _iso_cache = (ms, iso_at(now))
    return _iso_cache[1]


def iso_at(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def parse_keep_alive(value: Any) -> float | None:
    """Seconds to keep a model loaded (None: forever); Ollama takes a number or "5m", "30s"."""
    if value is None:
        return DEFAULT_KEEP_ALIVE
    if isinstance(value, bool):
        raise ValueError(f"invalid keep_alive {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value).strip())
        if not match:
            raise ValueError(f"time: invalid duration {value!r}")
        unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]
        seconds = float(match.group(1)) * unit
    return None if seconds < 0 else seconds


def parameter_size(count: int) -> str:
    """Ollama's short form: 3_210_000_000 -> "3.2B", 135_000_000 -> "135M"."""
    if count >= 1_000_000_000:
        return f"{count / 1e9:.1f}B"
    return f"{count / 1e6:.0f}M"


@attrs.frozen
class EmulatedModel:
    """A model an emulated node holds: its size facts and whether it starts loaded ("warm")."""

    name: str = attrs.field(converter=full_name)
    size: int = 2_000_000_000
    parameter_count: int = 3_000_000_000
    loaded: bool = True
    load_seconds: float = 1.0
    family: str = "llama"
    quantization: str = "Q4_K_M"
    context_length: int = 4096
    embedding_length: int = 16
    block_count: int = 28
    capabilities: tuple[str, ...] = ("completion", "tools")
    parent: str = ""
    """The model it was created from (Ollama's `details.parent_model`)."""

    @property
    def digest(self) -> str:
        # of everything the model is, as a real digest is of its content: the same name with
        # other capabilities is another model (caches keyed by digest rely on this)
        return hashlib.sha256(repr(attrs.astuple(self)).encode()).hexdigest()

    def details(self) -> dict[str, Any]:
        return {"parent_model": self.parent, "format": "gguf", "family": self.family,
                "families": [self.family], "parameter_size": parameter_size(self.parameter_count),
                "quantization_level": self.quantization}


@attrs.define
class ModelSlot:
    """A model on this node plus its runtime state (loaded until `expires_at`)."""

    model: EmulatedModel
    modified_at: float = attrs.field(factory=time.time)
    loaded: bool = False
    expires_at: float | None = None
    last_used: float = 0.0
    system: str = ""
    template: str = "{{ .Prompt }}"


@attrs.define
class ModelStore:
    """The models on one node; `max_loaded` bounds how many stay in memory (LRU eviction)."""

    max_loaded: int = 3
    gpu_memory: int | None = None
    """Bytes of GPU memory the node has: None holds every loaded model wholly on the GPU, 0 is a
    CPU-only node, else models take what is left of it in load order and spill to the CPU."""
    slots: dict[str, ModelSlot] = attrs.field(factory=dict)
    blobs: dict[str, int] = attrs.field(factory=dict)

    @classmethod
    def of(cls, models: Iterable[EmulatedModel], max_loaded: int = 3,
           gpu_memory: int | None = None) -> ModelStore:
        store = cls(max_loaded=max_loaded, gpu_memory=gpu_memory)
        for model in models:
            store.add(model)
        return store

    def add(self, model: EmulatedModel) -> ModelSlot:
        slot = ModelSlot(model=model)
        self.slots[model.name] = slot
        if model.loaded:
            self.mark_loaded(model.name, DEFAULT_KEEP_ALIVE)
        return slot

    def get(self, name: str) -> ModelSlot | None:
        return self.slots.get(full_name(name))

    def is_loaded(self, name: str) -> bool:
        self.expire()
        slot = self.get(name)
        return bool(slot and slot.loaded)

    def mark_loaded(self, name: str, keep_alive: float | None) -> None:
        slot = self.slots[full_name(name)]
        now = time.time()
        slot.loaded, slot.last_used = True, now
        slot.expires_at = None if keep_alive is None else now + keep_alive
        if keep_alive == 0:
            slot.loaded = False
        loaded = sorted((s for s in self.slots.values() if s.loaded), key=lambda s: s.last_used)
        for victim in loaded[: max(0, len(loaded) - self.max_loaded)]:
            victim.loaded = False

    def unload(self, name: str) -> None:
        slot = self.get(name)
        if slot is not None:
            slot.loaded, slot.expires_at = False, None

    def expire(self) -> None:
        now = time.time()
        for slot in self.slots.values():
            if slot.loaded and slot.expires_at is not None and slot.expires_at <= now:
                slot.loaded = False

    def tags(self) -> list[dict[str, Any]]:
        """Entries of `/api/tags`."""
        return [{"name": s.model.name, "model": s.model.name, "modified_at": iso_at(s.modified_at),
                 "size": s.model.size, "digest": s.model.digest, "details": s.model.details()}
                for s in self.slots.values()]

    def running(self) -> list[dict[str, Any]]:
        """Entries of `/api/ps`: `size` is the model's whole memory, `size_vram` the part of it
        on the GPU (Ollama's meaning: 0 on a CPU-only node, less than `size` when it spilled)."""
        self.expire()
        far = time.time() + 10 * 365 * 86400
        on_gpu: dict[str, int] = {}
        left = self.gpu_memory
        for s in sorted((s for s in self.slots.values() if s.loaded), key=lambda s: s.last_used):
            on_gpu[s.model.name] = s.model.size if left is None else min(s.model.size, left)
            left = None if left is None else left - on_gpu[s.model.name]
        return [{"name": s.model.name, "model": s.model.name, "size": s.model.size,
                 "digest": s.model.digest, "details": s.model.details(),
                 "expires_at": iso_at(s.expires_at if s.expires_at is not None else far),
                 "size_vram": on_gpu[s.model.name], "context_length": s.model.context_length}
                for s in self.slots.values() if s.loaded]

    def show(self, name: str) -> dict[str, Any] | None:
        """The `/api/show` body for a model, or None if it is not here."""
        slot = self.get(name)
        if slot is None:
            return None
        m = slot.model
        arch = m.family
        modelfile = f"# Modelfile generated by the SOLLOL emulator\nFROM {m.name}\n"
        if slot.system:
            modelfile += f'SYSTEM """{slot.system}"""\n'
        return {
            "modelfile": modelfile, "parameters": "", "template": slot.template,
            "system": slot.system, "details": m.details(), "modified_at": iso_at(slot.modified_at),
            "capabilities": list(m.capabilities),
            "model_info": {
                "general.architecture": arch, "general.parameter_count": m.parameter_count,
                "general.file_type": 15, "general.quantization_version": 2,
                f"{arch}.block_count": m.block_count, f"{arch}.context_length": m.context_length,
                f"{arch}.embedding_length": m.embedding_length,
            },
        }

    def copy(self, source: str, destination: str) -> bool:
        slot = self.get(source)
        if slot is None:
            return False
        clone = attrs.evolve(slot.model, name=destination, loaded=False)
        self.add(clone).system = slot.system
        return True

    def delete(self, name: str) -> bool:
        return self.slots.pop(full_name(name), None) is not None


def reply_tokens(model: str, prompt: str, count: int, text: str | None = None) -> list[str]:
    """The words a model "generates" for a prompt: `text` if given, else derived from a hash."""
    if text is not None:
        words = text.split(" ")
        return [w if i == 0 else " " + w for i, w in enumerate(words)][:count]
    seed = hashlib.sha256(f"{full_name(model)}\0{prompt}".encode()).digest()
    out = []
    for i in range(count):
        if i % 32 == 0 and i:
            seed = hashlib.sha256(seed).digest()
        word = _WORDS[seed[i % 32] % len(_WORDS)]
        out.append(word.capitalize() if i == 0 else " " + word)
    return out


def count_tokens(text: str) -> int:
    """A rough token count (words plus one), good enough for `prompt_eval_count`."""
    return len(text.split()) + 1


def embedding(model: str, text: str, dims: int, normalize: bool = True) -> list[float]:
    """A deterministic vector for `text`; L2-normalised like `/api/embed` returns."""
    values: list[float] = []
    block = hashlib.sha256(f"{full_name(model)}\0{text}".encode()).digest()
    while len(values) < dims:
        for (n,) in struct.iter_unpack("<I", block):
            values.append(n / 2**31 - 1.0)
        block = hashlib.sha256(block).digest()
    values = values[:dims]
    if normalize:
        norm = math.sqrt(sum(v * v for v in values)) or 1.0
        values = [v / norm for v in values]
    return values


def fill_schema(schema: Mapping[str, Any], words: list[str]) -> Any:
    """A value matching a (simple) JSON schema, for `format` requests."""
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties") or {}
        return {k: fill_schema(v, words) for k, v in props.items()}
    if kind == "array":
        return [fill_schema(schema.get("items") or {"type": "string"}, words)]
    if kind == "integer":
        return len(words)
    if kind == "number":
        return float(len(words)) / 2
    if kind == "boolean":
        return True
    if schema.get("enum"):
        return schema["enum"][0]
    return "".join(words).strip()
