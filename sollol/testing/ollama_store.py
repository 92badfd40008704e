"""Build an Ollama-layout model store from local GGUF files, as `ollama pull` would leave it.

`manifests/<registry>/<namespace>/<model>/<tag>` holds the manifest JSON and
`blobs/sha256-<hex>` every layer. For tests and the demo; no Ollama is needed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_LIST_TYPE = "application/vnd.ollama.manifest.list.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
MODEL = "application/vnd.ollama.image.model"
TEMPLATE = "application/vnd.ollama.image.template"
PARAMS = "application/vnd.ollama.image.params"
LICENSE = "application/vnd.ollama.image.license"
PROJECTOR = "application/vnd.ollama.image.projector"
ADAPTER = "application/vnd.ollama.image.adapter"


@attrs.frozen
class Layer:
    """One blob in the store, as a manifest refers to it."""

    media_type: str
    digest: str
    size: int

    def as_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


def split_name(name: str) -> tuple[str, str, str, str]:
    """(registry, namespace, model, tag) with Ollama's defaults filled in."""
    path, _, tag = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "")
    parts = path.split("/")
    defaults = ["registry.ollama.ai", "library"][: 3 - len(parts)]
    if len(parts) > 3 or not all(parts):
        raise ValueError(f"{name!r} is not a model name ([registry/][namespace/]model[:tag])")
    registry, namespace, model = [*defaults, *parts]
    return registry, namespace, model, tag or "latest"


@attrs.define
class OllamaStoreBuilder:
    """Writes models into a store folder (use it as OLLAMA_MODELS)."""

    root: Path

    def blob_bytes(self, data: bytes, media_type: str) -> Layer:
        """Store bytes as a blob (named by their sha256)."""
        digest = hashlib.sha256(data).hexdigest()
        path = self._blob(digest)
        if not path.exists():
            path.write_bytes(data)
        return Layer(media_type, f"sha256:{digest}", len(data))

    def blob_file(self, source: Path, media_type: str) -> Layer:
        """Store a file as a blob: hard-linked when possible (no copy of a big GGUF)."""
        sha = hashlib.sha256()
        with source.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                sha.update(block)
        path = self._blob(sha.hexdigest())
        if not path.exists():
            try:
                os.link(source, path)
            except OSError:
                shutil.copyfile(source, path)
        return Layer(media_type, f"sha256:{sha.hexdigest()}", source.stat().st_size)

    def add_model(
        self, name: str, gguf: Path, *, template: str = "{{ .Prompt }}",
        params: Mapping[str, Any] | None = None, license_text: str | None = None,
        projector: Path | None = None, adapter: Path | None = None,
    ) -> Path:
        """Store a model under `name` (e.g. "tiny", "me/tiny:v1", "hf.co/org/repo:Q4_0")."""
        layers = [self.blob_file(gguf, MODEL), self.blob_bytes(template.encode(), TEMPLATE)]
        if params:
            layers.append(self.blob_bytes(json.dumps(dict(params)).encode(), PARAMS))
        if license_text:
            layers.append(self.blob_bytes(license_text.encode(), LICENSE))
        if projector is not None:
            layers.append(self.blob_file(projector, PROJECTOR))
        if adapter is not None:
            layers.append(self.blob_file(adapter, ADAPTER))
        return self.write_manifest(name, self.manifest(layers))

    def manifest(self, layers: Sequence[Layer]) -> dict[str, Any]:
        """A manifest for these layers, with a config blob like Ollama's."""
        config = {"model_format": "gguf", "model_family": "llama", "model_families": ["llama"],
                  "os": "linux", "architecture": "amd64",
                  "rootfs": {"type": "layers", "diff_ids": [x.digest for x in layers]}}
        config_layer = self.blob_bytes(json.dumps(config).encode(), CONFIG_TYPE)
        return {"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
                "config": config_layer.as_json(), "layers": [x.as_json() for x in layers]}

    def add_manifest_list(
        self, name: str, variants: Mapping[tuple[str, str], Path],
    ) -> Path:
        """A manifest list: one model manifest per (os, architecture), each stored as a blob."""
        entries = []
        for (system, arch), gguf in variants.items():
            manifest = self.manifest([self.blob_file(gguf, MODEL)])
            layer = self.blob_bytes(json.dumps(manifest).encode(), MANIFEST_TYPE)
            entries.append({**layer.as_json(), "platform": {"os": system, "architecture": arch}})
        return self.write_manifest(name, {"schemaVersion": 2, "mediaType": MANIFEST_LIST_TYPE,
                                          "manifests": entries})

    def write_manifest(self, name: str, manifest: Mapping[str, Any] | str) -> Path:
        """Write a manifest as given (a string is written raw, e.g. to test corrupt JSON)."""
        path = self.root.joinpath("manifests", *split_name(name))
        path.parent.mkdir(parents=True, exist_ok=True)
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        path.write_text(text)
        return path

    def _blob(self, hex_digest: str) -> Path:
        folder = self.root / "blobs"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"sha256-{hex_digest}"
