"""A TCP proxy that records what a client and the gateway said, and a reader for what it saw.

Put between a client no one here wrote and the gateway, it lets a test check the bytes the client
got: each HTTP response's status, and every server-sent event of a stream (its JSON parses, its
`event:` name matches its `type`, the stream ends with its dialect's terminal event).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import attrs

from sollol.client.loop_thread import LoopThread


@attrs.define(eq=False)
class RecordingProxy:
    """Forward 127.0.0.1:port -> target; `exchanges` holds (request bytes, response bytes)."""

    target: tuple[str, int]
    port: int = 0
    exchanges: list[list[bytearray]] = attrs.field(factory=list)
    _loop_thread: LoopThread | None = None
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RecordingProxy:
        self._loop_thread = LoopThread("recording-proxy")
        self._server = self._loop_thread.run(
            asyncio.start_server(self._accept, "127.0.0.1", self.port))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        thread, server, self._loop_thread = self._loop_thread, self._server, None
        if thread is not None:
            if server is not None:
                thread.run(_close(server))  # on its own loop: asyncio is not thread-safe
            thread.stop()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        record = [bytearray(), bytearray()]
        self.exchanges.append(record)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pump(reader, up_writer, record[0]),
                             self._pump(up_reader, writer, record[1]))

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    seen: bytearray) -> None:
        try:
            while data := await reader.read(65536):
                seen += data
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()


@attrs.frozen
class Seen:
    """One response the client got: its request line, status, and events if it streamed."""

    request: str
    status: int
    content_type: str
    body: bytes
    events: list[dict[str, Any]]
    """Each SSE event as {"event": name or None, "data": parsed JSON or the raw text}."""


def responses(exchange: list[bytearray]) -> list[Seen]:
    """The HTTP/1.1 responses on one connection, paired with the request lines."""
    requests = [line.split(b"\r\n", 1)[0].decode() for line in _heads(bytes(exchange[0]))]
    out, data = [], bytes(exchange[1])
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        pairs = (h.partition(":") for h in lines[1:])
        headers = {k.strip().lower(): v.strip() for k, _, v in pairs}
        if headers.get("transfer-encoding") == "chunked":
            body, data = _unchunk(rest)
        else:
            size = int(headers.get("content-length", "0"))
            body, data = rest[:size], rest[size:]
        kind = headers.get("content-type", "")
        events = _sse(body) if kind.startswith("text/event-stream") else []
        request = requests[len(out)] if len(out) < len(requests) else "?"
        out.append(Seen(request, status, kind, body, events))
    return out


def _heads(data: bytes) -> list[bytes]:
    """Request heads (the body bytes between them are skipped by Content-Length)."""
    heads = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        heads.append(head)
        size = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                size = int(value)
        data = rest[size:]
    return heads


def _unchunk(data: bytes) -> tuple[bytes, bytes]:
    body = bytearray()
    while True:
        size_line, sep, rest = data.partition(b"\r\n")
        if not sep:
            return bytes(body), b""  # the connection ended mid-body
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return bytes(body), rest.partition(b"\r\n")[2]
        body += rest[:size]
        data = rest[size + 2:]


def _sse(body: bytes) -> list[dict[str, Any]]:
    events = []
    for block in body.decode("utf-8", "replace").split("\n\n"):
        name, payload = None, []
        for line in block.splitlines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                payload.append(line[5:].strip())
        if not payload:
            continue
        text = "\n".join(payload)
        try:
            data: Any = json.loads(text)
        except ValueError:
            data = text
        events.append({"event": name, "data": data})
    return events


async def _close(server: asyncio.Server) -> None:
    server.close()
