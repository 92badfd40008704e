"""What the pool's nodes hold: `/api/tags` and `/api/ps` entries, and size facts per model."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import httpx

from sollol.core.names import canonical, is_path, stem
from sollol.models import ModelInfo

from . import node_capabilities
from .node import Node, model_names
from .node_discovery import OPENAI, base_url

NEVER = "2318-11-26T00:00:00Z"
"""`expires_at` of a model that stays loaded (the far-future time Ollama reports for one)."""


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _openai_entry(model_id: str, meta: dict[str, Any], node: Node, loaded: bool,
                  ) -> dict[str, Any]:
    """An Ollama-style model entry for a model an OpenAI-compatible server lists: size and
    parameter count from `/v1/models`, family and quantization from llama-server's `/props`
    (and the GGUF header), times from when the node was first seen serving it."""
    params = meta.get("n_params")
    found = (node.report.extra.get("details") if node.report else None) or {}
    family = str(found.get("family") or "")
    details = {"parent_model": "", "format": "gguf", "family": family,
               "families": [family] if family else None,
               "parameter_size": parameter_size(params) if isinstance(params, int) else "",
               "quantization_level": str(found.get("quantization_level") or "")}
    name = stem(model_id) if is_path(model_id) else model_id
    since = node.up_since or time.time()
    digest = str(found.get("digest") or "") or node_capabilities.blob_digest(model_id)
    entry = {"name": name, "model": name, "modified_at": _iso(since),
             "size": int(meta.get("size") or 0),
             "digest": digest or identity_digest(name, meta), "details": details}
    if loaded:
        # llama-server keeps its model until it exits: it never expires
        entry.update(expires_at=NEVER, size_vram=int(meta.get("size") or 0))
    return entry


IDENTITY = ("n_params", "n_vocab", "n_embd", "n_ctx_train", "size", "ftype", "vocab_type")
"""What `/v1/models` says of a model file that no node's settings change (not `n_ctx`)."""


def identity_digest(name: str, meta: dict[str, Any]) -> str:
    """A digest for a model whose file's content digest is not known: SHA-256 of its name and
    the facts of its file (`IDENTITY`), the same on every node that serves it under that name;
    two models differ in name or in file."""
    facts = {key: meta[key] for key in IDENTITY if key in meta}
    text = json.dumps({"name": name, "file": facts}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def parameter_size(count: int) -> str:
    """Ollama's short form: 3_210_000_000 -> "3.2B", 135_000_000 -> "135M"."""
    if count >= 1_000_000_000:
        return f"{count / 1e9:.1f}B"
    if count >= 1_000_000:
        return f"{count / 1e6:.0f}M"
    return f"{count / 1e3:.0f}K"


def _collect(nodes: Iterable[Node], key: str) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for node in nodes:
        report = node.report
        if report is None or not node.healthy:
            continue
        if report.extra.get("api") == OPENAI:
            meta = report.extra.get("meta") or {}
            entries = [_openai_entry(m, meta.get(m) or {}, node, key == "ps")
                       for m in report.models]
        else:
            entries = list(report.extra.get(key) or [])
        for entry in entries:
            name = entry.get("name") or entry.get("model")
            if not name:
                continue
            known = seen.get(canonical(name))
            if known is None:
                seen[canonical(name)] = dict(entry)
            else:  # a detail one node could not tell (its GGUF unreadable there) another may
                _fill(known, entry)
    return list(seen.values())


def _fill(known: dict[str, Any], other: dict[str, Any]) -> None:
    details, more = known.get("details"), other.get("details")
    if isinstance(details, dict) and isinstance(more, dict):
        known["details"] = {**details, **{k: v for k, v in more.items()
                                          if v and not details.get(k)}}


def tags(nodes: Iterable[Node]) -> list[dict[str, Any]]:
    """The union of `/api/tags` over healthy nodes, one entry per model name."""
    return _collect(nodes, "tags")


def running(nodes: Iterable[Node]) -> list[dict[str, Any]]:
    """The union of `/api/ps` over healthy nodes, one entry per model name."""
    return _collect(nodes, "ps")


def _file_size(node: Node, model: str) -> int | None:
    names = model_names(model)
    for entry in (node.report.extra.get("tags") or []) if node.report else []:
        if {entry.get("name"), entry.get("model")} & names:
            return int(entry.get("size") or 0) or None
    return None


async def model_info(nodes: Iterable[Node], model: str, *, timeout: float) -> ModelInfo | None:
    """Size facts from the first healthy node holding `model` that can tell."""
    for node in nodes:
        if not (node.healthy and node.has_model(model)):
            continue
        if node.api == OPENAI:
            meta = (node.report.extra.get("meta") or {}) if node.report else {}
            found = (node.report.extra.get("details") or {}) if node.report else {}
            for name in model_names(model):
                if name in meta:
                    return _from_openai_meta(model, meta[name], node.id, found)
            continue
        try:
            async with httpx.AsyncClient(base_url=base_url(node.backend), timeout=timeout,
                                         headers=node.backend.auth_headers(),
                                         trust_env=False) as client:
                reply = await client.post("/api/show", json={"model": model})
        except httpx.HTTPError:
            continue
        if reply.status_code == 200:
            return from_show(model, reply.json(), _file_size(node, model), node.id)
    return None


def from_show(model: str, body: dict[str, Any], file_size: int | None, node_id: str,
              ) -> ModelInfo:
    """ModelInfo from an Ollama `/api/show` reply."""
    info = body.get("model_info") or {}
    details = body.get("details") or {}
    arch = info.get("general.architecture") or details.get("family")

    def arch_key(suffix: str) -> int | None:
        value = info.get(f"{arch}.{suffix}") if arch else None
        return value if isinstance(value, int) else None

    count = info.get("general.parameter_count")
    return ModelInfo(
        name=model, file_size=file_size,
        parameter_count=count if isinstance(count, int) else None,
        layer_count=arch_key("block_count"), quantization=details.get("quantization_level"),
        context_length=arch_key("context_length"), embedding_length=arch_key("embedding_length"),
        architecture=arch, source=f"/api/show on pool node {node_id}",
    )


def _from_openai_meta(model: str, meta: dict[str, Any], node_id: str,
                      details: dict[str, Any]) -> ModelInfo:
    """ModelInfo from `/v1/models` `meta`, with the family and quantization llama-server's
    `/props` (and the GGUF header, where readable) gave."""
    def number(key: str) -> int | None:
        value = meta.get(key)
        return value if isinstance(value, int) else None

    return ModelInfo(name=model, file_size=number("size"), parameter_count=number("n_params"),
                     context_length=number("n_ctx_train"), embedding_length=number("n_embd"),
                     architecture=str(details.get("family") or "") or None,
                     quantization=str(details.get("quantization_level") or "") or None,
                     source=f"/v1/models on pool node {node_id}")
