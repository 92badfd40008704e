"""One management call on one Ollama node, read defensively: a node may stream progress without
end, trickle bytes without a newline, send lines that are not JSON, or an endless error body.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from sollol.errors import BackendError

from .node import Node
from .node_discovery import base_url

MAX_LINE = 1024 * 1024
"""Longest progress line a node may send (Ollama's are well under 1 KiB)."""


class _Broken(Exception):
    """A node's progress stream broke the NDJSON contract or went quiet."""


async def _lines(reply: httpx.Response, idle: float) -> AsyncIterator[bytes]:
    """The reply's non-empty lines; _Broken when one takes longer than `idle` seconds to
    complete (a node trickling bytes without a newline stalls too) or is longer than MAX_LINE."""
    loop = asyncio.get_running_loop()
    chunks = reply.aiter_bytes()
    pending = b""
    deadline = loop.time() + idle
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                chunk = await anext(chunks, None)
        except TimeoutError:
            raise _Broken(f"sent no progress line for {idle:g}s "
                          "(pool_manage_idle_timeout)") from None
        if chunk is None:
            if pending.strip():
                yield pending
            return
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                yield line
        if lines:
            deadline = loop.time() + idle
        if len(pending) > MAX_LINE:
            raise _Broken(f"sent a progress line longer than {MAX_LINE} bytes")


async def stream_progress(node: Node, path: str, body: Mapping[str, Any],
                          queue: asyncio.Queue[Any], *, timeout: httpx.Timeout,
                          idle: float, statuses: dict[str, int]) -> str | None:
    """Stream one node's progress into `queue`; return its error message, or None.

    A node that refused the request records its HTTP status in `statuses`: an error status,
    or 400 for an error object in its stream (Ollama streams its refusals: "model not found").
    """
    try:
        async with httpx.AsyncClient(base_url=base_url(node.backend), timeout=timeout,
                                     headers=node.backend.auth_headers(),
                                     trust_env=False) as client, \
                client.stream("POST", path, json=dict(body)) as reply:
            if reply.status_code >= 400:
                raw = await _head_of(reply)
                statuses[node.id] = reply.status_code
                return _error_text(raw, reply.status_code)
            last = None
            async for line in _lines(reply, idle):
                try:
                    event = json.loads(line)
                except (ValueError, RecursionError):  # nested without end
                    return f"sent a line that is not JSON: {_clip(line)}"
                if not isinstance(event, dict):
                    return f"sent a line that is not a JSON object: {_clip(line)}"
                if event.get("error"):
                    statuses[node.id] = 400
                    return _clip(str(event["error"]))
                last = event
                await queue.put({**event, "node": node.id})
            if last is None or last.get("status") != "success":
                return "the node ended the stream without success"
            return None
    except _Broken as exc:
        return str(exc)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _head_of(reply: httpx.Response, limit: int = 64 * 1024) -> bytes:
    """At most `limit` bytes of an error body (a hostile node may send an endless one)."""
    out = b""
    async for chunk in reply.aiter_bytes():
        out += chunk
        if len(out) >= limit:
            break
    return out[:limit]


def _clip(text: str | bytes, limit: int = 200) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return text if len(text) <= limit else text[:limit] + "..."


def _error_text(raw: bytes, status: int) -> str:
    try:
        return _clip(str(json.loads(raw)["error"]))
    except (ValueError, KeyError, TypeError, RecursionError):
        return f"HTTP {status}: {_clip(raw)}"


async def send_blobs(node: Node, blobs: Mapping[str, Path],
                     timeout: httpx.Timeout) -> tuple[str, list[str]]:
    """Send each blob (digest -> file) that the node's `HEAD /api/blobs/:digest` says it lacks;
    returns the node's id and the digests sent. A refused blob is a BackendError."""
    sent = []
    async with httpx.AsyncClient(base_url=base_url(node.backend), timeout=timeout,
                                 headers=node.backend.auth_headers(),
                                 trust_env=False) as client:
        for digest, path in blobs.items():
            url = f"/api/blobs/{digest}"
            try:
                if (await client.head(url)).status_code == 200:
                    continue
                reply = await client.post(url, content=_file_chunks(path))
            except httpx.HTTPError as exc:
                raise BackendError(f"{node.id}: could not send blob {digest}: "
                                   f"{type(exc).__name__}: {exc}") from None
            if reply.status_code >= 400:
                raise BackendError(f"{node.id}: refused blob {digest}: "
                                   f"{_error_text(reply.content, reply.status_code)}")
            sent.append(digest)
    return node.id, sent


async def _file_chunks(path: Path, size: int = 1 << 20) -> AsyncIterator[bytes]:
    """A file in 1 MiB pieces (a model file is never read into memory whole)."""
    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, size):
            yield chunk


async def call(node: Node, method: str, path: str, body: Mapping[str, Any],
               timeout: httpx.Timeout) -> tuple[str, int, str | None]:
    """One short management request: the node's id, the HTTP status and the error, if any."""
    try:
        async with httpx.AsyncClient(base_url=base_url(node.backend),
                                     headers=node.backend.auth_headers(),
                                     timeout=timeout, trust_env=False) as client, \
                client.stream(method, path, json=dict(body)) as reply:
            raw = await _head_of(reply)  # the answer is small; a hostile one is cut off
    except httpx.HTTPError as exc:
        status = 504 if isinstance(exc, httpx.TimeoutException) else 502
        return node.id, status, f"{type(exc).__name__}: {exc}"
    error = None if reply.status_code < 400 else _error_text(raw, reply.status_code)
    return node.id, reply.status_code, error
