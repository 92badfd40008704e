"""The probes' HTTP: one aiohttp session whose keep-alive connections every probe reuses.

Why aiohttp and not httpx here: a probe is three small GETs, and measured on the development VM
httpx's AsyncClient spent about 2 ms of CPU on them, aiohttp about 0.5 ms (docs/performance.md,
"Idle cost of health probes"). A new client per probe, as before, cost about 20-40 ms: a new
connection pool and TLS context each time.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import attrs

MAX_REPLY = 8 * 1024 * 1024
"""Most bytes of one probe reply (a node's model list); a node sending more is unhealthy."""
KEEPALIVE_MIN = 30.0
"""Seconds an idle connection is kept at least (longer when the probe interval is longer)."""


class ReplyTooLarge(ValueError):
    """A node's reply to a probe was larger than MAX_REPLY."""


@attrs.frozen
class Reply:
    status: int
    body: bytes

    def json(self) -> Any:
        """The body as JSON (ValueError when it is not)."""
        return json.loads(self.body)


def new_session(interval: float) -> aiohttp.ClientSession:
    """A session for probing: no connection limit (each node's probe holds one connection at a
    time), idle connections kept past the next probe, no proxy from the environment (probes go
    to the nodes themselves)."""
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=max(KEEPALIVE_MIN, 3 * interval))
    return aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=True,
                                 timeout=aiohttp.ClientTimeout(total=None))


@attrs.frozen
class NodeClient:
    """One node seen through the shared session: its root URL and its headers."""

    session: aiohttp.ClientSession
    root: str
    headers: dict[str, str]

    async def get(self, path: str) -> Reply:
        async with self.session.get(self.root + path, headers=self.headers,
                                    allow_redirects=False) as reply:
            return Reply(reply.status, await _body(reply))

    async def post(self, path: str, body: bytes) -> Reply:
        headers = {**self.headers, "Content-Type": "application/json"}
        async with self.session.post(self.root + path, data=body, headers=headers,
                                     allow_redirects=False) as reply:
            return Reply(reply.status, await _body(reply))


async def _body(reply: aiohttp.ClientResponse) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for chunk in reply.content.iter_any():
        size += len(chunk)
        if size > MAX_REPLY:
            raise ReplyTooLarge(f"reply to {reply.url.path} is larger than {MAX_REPLY} bytes")
        parts.append(chunk)
    return b"".join(parts)
