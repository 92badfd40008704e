"""What a pool node can do, from what it reports (asked by the health probe when a node's model
list changes, see node_probe.Prober).

- llama-server: `/props` (chat template, its tool support, vision modality, and whether it
  serves `/slots` and `/metrics`: `endpoint_slots`, `endpoint_metrics`; the family from the
  operator's own copy of its model, found by the file's name: a path a node names is never
  opened, it may be a FIFO, a device or a huge file); embeddings by asking `/v1/embeddings` with
  an empty body once per model load: a server without `--embeddings` answers 501, one whose
  pooling cannot give OpenAI embeddings a 400 naming the pooling type, one that can a 400 about
  the missing input. All three come at once, before any slot is taken: a real input would wait
  behind a busy server's generations (a one-slot server streaming a long reply would hold the
  lesson past the probe's timeout).
- Ollama: `/api/show` `capabilities` per model, cached by digest (a model's capabilities change
  only when the model does).
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

import attrs

from sollol.core import capabilities as caps

from .node_http import NodeClient, Reply

_BLOB = re.compile(r"sha256[-:]([0-9a-f]{64})")
SHOW_CACHE_SIZE = 4096
_show_cache: OrderedDict[tuple[str, str, str], frozenset[str]] = OrderedDict()
_lock = threading.Lock()


FamilyOf = Callable[[str], Awaitable[str | None]]
"""The architecture of the GGUF that a model *name* resolves to among the operator's own files
(`gguf_dirs`, Ollama's store), or None."""


@attrs.frozen
class OpenAIServer:
    """What an OpenAI-compatible server says of itself."""

    server: str
    """Its kind in words."""
    capabilities: frozenset[str] | None
    """None when the server does not tell (then learned from its answers)."""
    details: dict[str, str]
    """`family`, `quantization_level` and `digest` where llama-server's `/props` says (the
    family from the operator's own copy of the file it names, never the path itself)."""
    unserved: frozenset[str] = frozenset()
    """Paths it said it does not serve (`/slots`, `/metrics`): never asked for this model."""


_ENDPOINT_FLAGS = {"endpoint_slots": "/slots", "endpoint_metrics": "/metrics"}


async def openai_server(client: NodeClient, family_of: FamilyOf | None = None) -> OpenAIServer:
    """What the server is and can do, from `/props` and one embedding request."""
    props = _json(await client.get("/props"))
    found: set[str] | None = None
    server = "openai-compatible server"
    details: dict[str, str] = {}
    unserved: frozenset[str] = frozenset()
    if isinstance(props, dict) and ("model_path" in props or "build_info" in props):
        server = "llama-server"
        unserved = frozenset(path for flag, path in _ENDPOINT_FLAGS.items()
                             if props.get(flag) is False)
        details = await _details(props, family_of)
        # tools too: llama-server takes tool definitions with any chat template (a template
        # without native support gets its generic tool-call format)
        found = {caps.COMPLETION, caps.TOOLS}
        if props.get("chat_template"):
            found.add(caps.CHAT)
        modalities = props.get("modalities")
        if isinstance(modalities, dict) and modalities.get("vision"):
            found.add(caps.VISION)
    if found is None:  # another server: learned from its answers
        return OpenAIServer(server, None, details)
    if await _embeds(client):
        found.add(caps.EMBEDDING)
    return OpenAIServer(server, frozenset(found), details, unserved)


async def _details(props: dict[str, Any], family_of: FamilyOf | None) -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(props.get("model_ftype"), str):
        out["quantization_level"] = props["model_ftype"]
    path = props.get("model_path")
    if isinstance(path, str) and path:
        digest = blob_digest(path)  # a string parse of the name, never a file open
        if digest:
            out["digest"] = digest
    if isinstance(path, str) and path and family_of is not None:
        # only the file's name, a string: never the path itself (another machine's, or a FIFO)
        name = PureWindowsPath(PurePosixPath(path).name).name.removesuffix(".gguf")
        family = await family_of(name) if name and name not in (".", "..") else None
        if family:
            out["family"] = family
    return out


def blob_digest(path: str) -> str | None:
    """The content digest an Ollama store's blob path names (`.../blobs/sha256-<64 hex>`),
    or None for any other file name."""
    match = _BLOB.fullmatch(path.replace("\\", "/").rsplit("/", 1)[-1])
    return match.group(1) if match else None


async def _embeds(client: NodeClient) -> bool:
    reply = await client.post("/v1/embeddings", b"{}")
    if reply.status in (404, 405):
        return False
    return caps.unsupported(reply.status, reply.body,
                            frozenset({caps.EMBEDDING})) is None


async def ollama_models(client: NodeClient, node: str, tags: list[dict[str, Any]],
                        ) -> dict[str, frozenset[str]]:
    """Capabilities per model name from `/api/show`; models it would not show are left out."""
    out: dict[str, frozenset[str]] = {}
    for entry in tags:
        name = str(entry.get("name") or entry.get("model") or "")
        key = (node, name, str(entry.get("digest") or ""))
        with _lock:
            known = _show_cache.get(key)
        if known is None:
            reply = await client.post("/api/show", json.dumps({"model": name}).encode())
            body = _json(reply)
            reported = body.get("capabilities") if isinstance(body, dict) else None
            if not isinstance(reported, list):
                continue  # an older Ollama: capabilities unknown, learned from answers
            known = ollama_capabilities(str(c) for c in reported)
            with _lock:
                _show_cache[key] = known
                while len(_show_cache) > SHOW_CACHE_SIZE:
                    _show_cache.popitem(last=False)
        out[name] = known
    return out


def ollama_capabilities(reported: Any) -> frozenset[str]:
    """Ollama's capability words as ours: a "completion" model chats, and Ollama computes
    embeddings with any model that has "completion" or "embedding"."""
    found = set(reported)
    if caps.COMPLETION in found:
        found |= {caps.CHAT, caps.EMBEDDING}
    return frozenset(found)


def _json(reply: Reply) -> Any:
    if reply.status != 200:
        return None
    try:
        return reply.json()
    except ValueError:
        return None
