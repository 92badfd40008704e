"""Raw ASGI plumbing for the emulator: one request's body, JSON replies and NDJSON streams.

Raw ASGI on uvicorn (httptools + uvloop) answered ~19k small JSON requests/s on this machine,
aiohttp.web ~9k: the emulator must outrun the gateway it is used to benchmark.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import attrs

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_BODY = 64 * 1024 * 1024
_JSON = b"application/json; charset=utf-8"
_NDJSON = b"application/x-ndjson"


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


GO_FIELDS = ("model", "name", "messages", "prompt", "input", "stream", "options", "keep_alive",
             "format", "think", "raw", "system", "template", "tools", "logprobs", "top_logprobs",
             "dimensions", "from", "files", "modelfile", "source", "destination", "insecure")
"""The top-level request fields the emulator reads, as Ollama's Go structs name them."""
_GO_FOLDED = {field.casefold(): field for field in GO_FIELDS}


def go_fields(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's keys as Go's `encoding/json` gives them to a struct: a key equal to a field
    but for case (Unicode simple folding: `Model`, `MODEL`) sets that field, and the last key
    to set a field wins. A real Ollama runs `secret` for `{"model": "tiny", "Model": "secret"}`;
    so does the emulator."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        out[_GO_FOLDED.get(key.casefold(), key)] = value
    return out


class HttpError(Exception):
    """Ends a request with an Ollama-style `{"error": ...}` body and a status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class DroppedConnection(Exception):
    """Raised after the response started to make uvicorn cut the connection (a fault)."""


class ClientGone(Exception):
    """The client closed the connection during a stream: stop generating, as Ollama does."""


class _QuietDrops(logging.Filter):
    """uvicorn logs an app exception as an error; injected drops are expected, not errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, DroppedConnection | asyncio.CancelledError)


def quiet_injected_drops() -> None:
    """Install the filter once on uvicorn's error logger."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietDrops) for f in logger.filters):
        logger.addFilter(_QuietDrops())


@attrs.define
class Call:
    """One HTTP request in flight: read its body, answer once or stream."""

    scope: Scope
    receive: Receive
    send: Send
    node_name: bytes
    started: bool = False
    streaming: bool = False
    gone: bool = False
    _watcher: asyncio.Task[None] | None = None

    @property
    def method(self) -> str:
        return self.scope["method"]

    @property
    def path(self) -> str:
        return self.scope["path"]

    async def body(self) -> bytes:
        chunks, size = [], 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise DroppedConnection("client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:
                raise HttpError(413, "request body too large")
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def json(self) -> dict[str, Any]:
        """The body as Ollama's Go decoder reads it (`go_fields`)."""
        raw = await self.body()
        if not raw.strip():
            raise HttpError(400, "missing request body")
        objects: list[list[tuple[str, Any]]] = []

        def keep(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            objects.append(pairs)
            return dict(pairs)

        try:
            value = json.loads(raw, object_pairs_hook=keep)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HttpError(400, f"invalid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise HttpError(400, "request body must be a JSON object")
        return go_fields(objects[-1])  # (the outermost object is the last one built)

    async def wait_disconnect(self) -> None:
        """Block until the client goes away (used to hang without busy work)."""
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                return

    def _headers(self, content_type: bytes, extra: list[tuple[bytes, bytes]]) -> list:
        return [(b"content-type", content_type), (b"x-emulator-node", self.node_name), *extra]

    async def respond(self, status: int, body: bytes, content_type: bytes = _JSON) -> None:
        headers = self._headers(content_type, [(b"content-length", str(len(body)).encode())])
        self.started = True
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        if self.method != "HEAD":
            await self.send({"type": "http.response.body", "body": body})
        else:
            await self.send({"type": "http.response.body", "body": b""})

    async def json_reply(self, obj: Any, status: int = 200) -> None:
        await self.respond(status, dumps(obj))

    async def error(self, status: int, message: str) -> None:
        await self.respond(status, dumps({"error": message}))

    async def text(self, text: str, status: int = 200) -> None:
        await self.respond(status, text.encode(), b"text/plain; charset=utf-8")

    async def start_stream(self) -> None:
        self.started = self.streaming = True
        await self.send({"type": "http.response.start", "status": 200,
                         "headers": self._headers(_NDJSON, [])})
        self._watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        await self.wait_disconnect()
        self.gone = True

    def stop_watching(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    async def line(self, obj: Any) -> None:
        if self.gone:
            raise ClientGone("the client closed the connection")
        await self.send({"type": "http.response.body", "body": dumps(obj) + b"\n",
                         "more_body": True})

    async def end_stream(self) -> None:
        await self.send({"type": "http.response.body", "body": b""})

    async def drop_partial(self, body: bytes) -> None:
        """Send headers and half of a body, then cut the connection."""
        headers = self._headers(_JSON, [(b"content-length", str(len(body)).encode())])
        self.started = True
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})
        await self.send({"type": "http.response.body", "body": body[: len(body) // 2],
                         "more_body": True})
        raise DroppedConnection("injected drop")
