"""Small ASGI helpers: read a bounded body, send a whole response, encode SOLLOL's headers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote

from sollol.errors import PayloadTooLarge

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON = b"application/json; charset=utf-8"
# Printable ASCII stays as is; anything else (non-ASCII, control characters) is %-encoded.
_HEADER_SAFE = " !\"#$&'()*+,-./:;<=>?@[]^_`{|}~"
_ROUTE_HEADERS = (("route", b"x-sollol-route"), ("backend", b"x-sollol-backend"),
                  ("policy", b"x-sollol-policy"), ("reason", b"x-sollol-reason"),
                  ("fallback", b"x-sollol-fallback"), ("requested", b"x-sollol-requested-model"))
_OPTIONAL = frozenset({b"x-sollol-fallback", b"x-sollol-requested-model"})
"""Sent only when set: a fallback model served the request that asked for another."""


def redacting(send: Send, redactor: Callable[[], Any], errors_only: bool) -> Send:
    """`send`, its body redacted by `redactor()` (a `sollol.core.redact.Redactor`, made only
    when needed): every response, or with `errors_only` those with a 4xx/5xx status."""
    active: Any = None
    start: dict[str, Any] | None = None  # held until the body says how long it is now

    async def redacted_send(message: dict[str, Any]) -> None:
        nonlocal active, start
        if message["type"] == "http.response.start":
            if not errors_only or message["status"] >= 400:
                active = redactor() or None
            if active is not None:
                start = message
                return
        elif active is not None:
            message = {**message, "body": active.data(message.get("body", b""))}
            if start is not None:
                whole = not message.get("more_body", False)
                headers = [(n, v) for n, v in start.get("headers", ()) if n != b"content-length"]
                if whole:
                    headers.append((b"content-length", str(len(message["body"])).encode()))
                await send({**start, "headers": headers})
                start = None
        await send(message)

    return redacted_send


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body; PayloadTooLarge as soon as it is known to exceed `limit` bytes."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise PayloadTooLarge(_too_large(int(value), limit))
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(_too_large(size, limit, at_least=True))
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(size: int, limit: int, at_least: bool = False) -> str:
    what = f"at least {size}" if at_least else str(size)
    return f"request body is {what} bytes, over the limit of {limit} (max_body_bytes)"


def route_headers(route: Mapping[str, str]) -> Headers:
    """`X-Sollol-Route`, `-Backend`, `-Policy`, `-Reason` as header bytes (ASCII, URL-safe)."""
    key = tuple(route.get(name) or "" for name, _ in _ROUTE_HEADERS)
    cached = _HEADER_CACHE.get(key)
    if cached is None:
        if len(_HEADER_CACHE) >= 1024:  # reasons may carry numbers; keep the cache bounded
            _HEADER_CACHE.clear()
        cached = [(header, quote(str(value), safe=_HEADER_SAFE)[:512].encode())
                  for (_, header), value in zip(_ROUTE_HEADERS, key, strict=True)
                  if value or header not in _OPTIONAL]
        _HEADER_CACHE[key] = cached
    return cached


_HEADER_CACHE: dict[tuple[str, ...], Headers] = {}


async def send_body(send: Send, status: int, body: bytes, content_type: bytes = JSON,
                    headers: Headers | None = None, head: bool = False) -> None:
    """A complete response with Content-Length (no body bytes for HEAD)."""
    all_headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
    if headers:
        all_headers += headers
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def send_json(send: Send, status: int, data: Any, headers: Headers | None = None,
                    head: bool = False) -> None:
    await send_body(send, status, json.dumps(data, default=str).encode(), JSON, headers, head)


class DisconnectWatch:
    """Cancels the request's task when the client goes away before the response is complete.

    The watching task starts only once a request has run for `delay` seconds: a task per
    request cost ~50 us of CPU (a third of the gateway's own work), and a client that leaves
    during a fast request costs the backend almost nothing.
    """

    def __init__(self, task: asyncio.Task[Any], receive: Receive, delay: float = 0.05) -> None:
        self.task = task
        self.finishing = False
        self.disconnected = False
        self._receive = receive
        self._watcher: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            delay, self._start)

    def _start(self) -> None:
        self._timer = None
        if not self.finishing:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                break
        if not self.finishing:
            self.disconnected = True
            self.task.cancel()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()
