"""Putting a GGUF file into Ollama's on-disk store, as `ollama create` from a GGUF would.

What `sollol models import FILE NAME[:TAG]` does on a gateway machine without Ollama: the
weights become `blobs/sha256-<hex>` (a hard link when the file is on the same filesystem and
`copy` is not asked, else a copy), a config blob records the format and family, and the
manifest `manifests/<registry>/<namespace>/<model>/<tag>` names both. Every file is written
under a temporary name and renamed, so a gateway reading the store never sees half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import attrs

from sollol.errors import ModelFileError, SollolError
from sollol.models import ResolvedModel

from .store import GGUF_MAGIC, MODEL_LAYER, ModelName, blob_path, find_manifest, resolve

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"


@attrs.frozen
class Imported:
    """What an import wrote: the model as the store now resolves it, and how its blob came."""

    model: ResolvedModel
    manifest: Path
    linked: bool


def import_gguf(root: Path, source: Path, name: ModelName, *, family: str | None = None,
                copy: bool = False, replace: bool = False) -> Imported:
    """Store `source` under `name` in the store at `root`; SollolError says why not."""
    with source.open("rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise ModelFileError(f"{source} is not a GGUF file (it does not start with 'GGUF')")
    existing = find_manifest(root, name)
    if existing is not None and not replace:
        raise SollolError(f"{name.display()} is already in {root} ({existing}); pass --force "
                          "to replace it")
    digest, size = _sha256(source)
    linked = _store_blob(root, source, digest, copy)
    config = {"model_format": "gguf", "model_family": family or "",
              "model_families": [family] if family else [],
              "rootfs": {"type": "layers", "diff_ids": [digest]}}
    config_digest, config_size = _store_bytes(root, json.dumps(config).encode())
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
                "config": {"mediaType": CONFIG_TYPE, "digest": config_digest,
                           "size": config_size},
                "layers": [{"mediaType": MODEL_LAYER, "digest": digest, "size": size}]}
    target = root.joinpath("manifests", *name.parts)
    _write_atomically(target, json.dumps(manifest).encode())
    model = resolve(name.display(), [root])
    if model is None:  # the store just written must read back
        raise ModelFileError(f"wrote {target}, but it does not resolve")
    return Imported(model, target, linked)


def _sha256(path: Path) -> tuple[str, int]:
    sha, size = hashlib.sha256(), 0
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            sha.update(block)
            size += len(block)
    return f"sha256:{sha.hexdigest()}", size


def _store_blob(root: Path, source: Path, digest: str, copy: bool) -> bool:
    """The blob for `digest` from `source`; True when it is a hard link to the source."""
    target = blob_path(root, digest)
    if target.is_file():
        return False  # the same bytes are stored already
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    linked = False
    if not copy:
        try:
            os.link(source, partial)
            linked = True
        except OSError:  # another filesystem, or links not allowed: copy instead
            pass
    if not linked:
        shutil.copyfile(source, partial)
    partial.chmod(0o644)  # Ollama's own blobs are readable by its service account
    os.replace(partial, target)
    return linked


def _store_bytes(root: Path, data: bytes) -> tuple[str, int]:
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    target = blob_path(root, digest)
    if not target.is_file():
        _write_atomically(target, data)
    return digest, len(data)


def _write_atomically(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(partial, 0o644)
        os.replace(partial, target)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
