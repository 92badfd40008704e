"""Ollama's on-disk model store: parse names, read manifests, find the GGUF blob safely.

Layout: `<root>/manifests/<registry>/<namespace>/<model>/<tag>` (JSON) and
`<root>/blobs/sha256-<64 hex>`. Nothing here writes to the store.
"""

from __future__ import annotations

import json
import os
import platform
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from sollol.errors import ModelFileError
from sollol.models import ResolvedModel

DEFAULT_REGISTRY = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
SERVICE_STORE = Path("/usr/share/ollama/.ollama/models")
MODEL_LAYER = "application/vnd.ollama.image.model"
PROJECTOR_LAYER = "application/vnd.ollama.image.projector"
ADAPTER_LAYER = "application/vnd.ollama.image.adapter"
MANIFEST_LIST_TYPES = ("application/vnd.ollama.manifest.list.v2+json",
                       "application/vnd.oci.image.index.v1+json",
                       "application/vnd.docker.distribution.manifest.list.v2+json")
GGUF_MAGIC = b"GGUF"
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(:[0-9]{1,5})?")
_DIGEST = re.compile(r"sha256[:-]([0-9a-f]{64})")
_ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


@attrs.frozen
class ModelName:
    """A fully qualified Ollama model name."""

    registry: str
    namespace: str
    model: str
    tag: str

    @property
    def parts(self) -> tuple[str, str, str, str]:
        return (self.registry, self.namespace, self.model, self.tag)

    def display(self) -> str:
        """The short form `ollama list` shows: defaults left out."""
        if self.registry == DEFAULT_REGISTRY:
            prefix = "" if self.namespace == DEFAULT_NAMESPACE else f"{self.namespace}/"
        else:
            prefix = f"{self.registry}/{self.namespace}/"
        return f"{prefix}{self.model}:{self.tag}"


def parse_name(text: str) -> ModelName | None:
    """`name`, `name:tag`, `user/name`, `host/user/name:tag`; None if it is not such a name."""
    text = text.strip()
    if text.startswith(("http://", "https://")):
        text = text.split("://", 1)[1]
    path, _, tag = text.rpartition(":") if ":" in text.rsplit("/", 1)[-1] else (text, "", "")
    tag = tag or DEFAULT_TAG
    parts = path.split("/")
    if len(parts) == 1:
        registry, namespace, model = DEFAULT_REGISTRY, DEFAULT_NAMESPACE, parts[0]
    elif len(parts) == 2:
        registry, (namespace, model) = DEFAULT_REGISTRY, parts
    elif len(parts) == 3:
        registry, namespace, model = parts
    else:
        return None
    valid = all(_PART.fullmatch(p) for p in (namespace, model, tag))
    if not valid or not _HOST.fullmatch(registry):
        return None
    return ModelName(registry, namespace, model, tag)


def store_roots(explicit: str | None = None, env: Mapping[str, str] | None = None) -> list[Path]:
    """Stores to search: the one named (config, OLLAMA_MODELS), else the user and service stores."""
    env = os.environ if env is None else env
    if explicit:
        return [Path(explicit).expanduser()]
    if env.get("OLLAMA_MODELS"):
        return [Path(env["OLLAMA_MODELS"]).expanduser()]
    return [Path.home() / ".ollama" / "models", SERVICE_STORE]


def blob_path(root: Path, digest: object) -> Path:
    """The blob for a digest; anything but `sha256:<64 hex>` is refused (no path traversal)."""
    match = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if match is None:
        shown = repr(digest)[:100]  # (a hostile manifest's digest may be megabytes)
        raise ModelFileError(f"refusing digest {shown}: expected sha256:<64 hex characters>")
    return root / "blobs" / f"sha256-{match.group(1)}"


def find_manifest(root: Path, name: ModelName) -> Path | None:
    """The manifest file for a name; names match case-insensitively, as in Ollama."""
    exact = root.joinpath("manifests", *name.parts)
    if exact.is_file():
        return exact
    folder = root / "manifests"
    for part in name.parts:
        if not folder.is_dir():
            return None
        folder = next((p for p in folder.iterdir() if p.name.lower() == part.lower()), None)
        if folder is None:
            return None
    return folder if folder.is_file() else None


def resolve(name_text: str, roots: Sequence[Path]) -> ResolvedModel | None:
    """The GGUF weights of a stored model, or None if no store has it.

    Raises ModelFileError when the model is there but broken: bad JSON, no weights layer, an
    unsafe digest, a missing or truncated blob, or a blob that is not GGUF.
    """
    name = parse_name(name_text)
    if name is None:
        return None
    for root in roots:
        try:
            manifest_path = find_manifest(root, name)
        except PermissionError:  # e.g. the service's store, readable only by user `ollama`
            continue
        if manifest_path is not None:
            return _from_manifest(name_text, root, manifest_path)
    return None


def _from_manifest(name_text: str, root: Path, manifest_path: Path) -> ResolvedModel:
    manifest = _load_json(manifest_path)
    if _is_manifest_list(manifest):
        manifest = _load_json(_pick_platform(root, manifest, manifest_path))
    layers = manifest.get("layers")
    if not isinstance(layers, list) or not all(isinstance(x, dict) for x in layers):
        raise ModelFileError(f"manifest {manifest_path} has no list of layers")
    weights = [x for x in layers if x.get("mediaType") == MODEL_LAYER]
    if not weights:
        raise ModelFileError(f"manifest {manifest_path} has no {MODEL_LAYER} layer")
    layer = weights[0]
    path = blob_path(root, layer.get("digest"))
    size = _check_gguf(path, layer.get("size"), manifest_path)
    return ResolvedModel(
        name=name_text, path=path, size=size, source=f"ollama:{manifest_path}",
        digest=str(layer["digest"]).replace("-", ":", 1),
        projectors=_extra_layers(root, layers, PROJECTOR_LAYER, manifest_path),
        adapters=_extra_layers(root, layers, ADAPTER_LAYER, manifest_path),
    )


MAX_MANIFEST = 4 * 1024 * 1024
"""Bytes of a manifest read at most (Ollama's are a few KiB; a huge file is not one)."""


def _load_json(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_MANIFEST + 1)
        if len(raw) > MAX_MANIFEST:
            raise ModelFileError(f"corrupt manifest {path}: over {MAX_MANIFEST} bytes")
        data = json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        what = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise ModelFileError(f"corrupt manifest {path}: {what}") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"corrupt manifest {path}: not a JSON object")
    return data


def _is_manifest_list(manifest: Mapping[str, Any]) -> bool:
    media_type = manifest.get("mediaType")
    return (isinstance(media_type, str) and media_type in MANIFEST_LIST_TYPES) or (
        "manifests" in manifest and "layers" not in manifest)


def _pick_platform(root: Path, index: Mapping[str, Any], where: Path) -> Path:
    """The manifest in a list for this machine's OS and CPU (else the first), stored as a blob."""
    entries = index.get("manifests")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries or [None]):
        raise ModelFileError(f"manifest list {where} lists no manifests")
    arch = _ARCHES.get(platform.machine().lower(), platform.machine().lower())
    system = platform.system().lower()

    def fits(entry: Mapping[str, Any]) -> bool:
        wanted = entry.get("platform")
        wanted = wanted if isinstance(wanted, dict) else {}
        return wanted.get("os", system) == system and wanted.get("architecture", arch) == arch

    chosen = next((e for e in entries if fits(e)), entries[0])
    path = blob_path(root, chosen.get("digest"))
    if not path.is_file():
        raise ModelFileError(f"manifest list {where} points at missing blob {path}")
    return path


def _check_gguf(path: Path, expected_size: object, manifest: Path) -> int:
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
            size = os.fstat(handle.fileno()).st_size
    except FileNotFoundError:
        raise ModelFileError(f"{manifest} names blob {path.name}, which is missing") from None
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc}") from None
    if magic != GGUF_MAGIC:
        raise ModelFileError(f"blob {path} (from {manifest}) is not a GGUF file")
    if isinstance(expected_size, int) and expected_size != size:
        msg = f"blob {path} has {size} bytes, its manifest says {expected_size} (incomplete pull?)"
        raise ModelFileError(msg)
    return size


def _extra_layers(root: Path, layers: list[dict[str, Any]], media_type: str,
                  manifest: Path) -> tuple[Path, ...]:
    found = []
    for layer in layers:
        if layer.get("mediaType") == media_type:
            path = blob_path(root, layer.get("digest"))
            if not path.is_file():
                raise ModelFileError(f"{manifest} names blob {path.name}, which is missing")
            found.append(path)
    return tuple(found)


def stored_names(roots: Sequence[Path]) -> Iterator[tuple[ModelName, Path, Path]]:
    """Every (name, manifest, store root) in the stores, sorted by name within each store."""
    for root in roots:
        base = root / "manifests"
        try:
            manifests = sorted(p for p in base.glob("*/*/*/*") if p.is_file())
        except PermissionError:
            continue
        for manifest in manifests:
            registry, namespace, model, tag = manifest.relative_to(base).parts
            yield ModelName(registry, namespace, model, tag), manifest, root

