"""A raw TCP server that plays scripts: a misbehaving node for tests of the upstream client.

Each request is handed to `script(request, writer)`, which writes whatever bytes it likes (broken
framing, interim responses, extra replies, nothing at all) and returns whether to keep the
connection. The server runs on its own thread and loop, so sync tests with gateway threads and
async tests alike can use it; it records every request and every connection the client closed.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any

import attrs


@attrs.frozen
class RawRequest:
    """One request as the server read it."""

    method: str
    path: str
    head: bytes
    body: bytes
    connection: int
    """Which connection (numbered from 0 in accept order) carried it."""
    peer_port: int

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            return None


Script = Callable[[RawRequest, asyncio.StreamWriter], Awaitable[bool]]
"""Answers one request; returns False to close the connection afterwards."""


def response(body: bytes, status: int = 200, *, headers: str = "", length: int | None = None,
             version: str = "1.1", content_type: str = "application/json") -> bytes:
    """An HTTP response with a Content-Length (`length` overrides the true one; -1: none)."""
    size = len(body) if length is None else length
    framing = "" if size < 0 else f"Content-Length: {size}\r\n"
    return (f"HTTP/{version} {status} X\r\nContent-Type: {content_type}\r\n{framing}{headers}\r\n"
            .encode() + body)


def chunked(body: bytes, *, status: int = 200, size: int = 5) -> bytes:
    """An HTTP/1.1 response with a chunked body (pieces of `size` bytes)."""
    pieces = [body[i:i + size] for i in range(0, len(body), size)]
    framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    return f"HTTP/1.1 {status} X\r\nTransfer-Encoding: chunked\r\n\r\n".encode() + framed


@attrs.define
class HostileNode:
    """Serve every request with `script`; `on_connect` may write before any request is read."""

    script: Script
    on_connect: Callable[[asyncio.StreamWriter], Awaitable[None]] | None = None
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[RawRequest] = attrs.field(factory=list, repr=False)
    connections: int = 0
    closed_by_client: list[int] = attrs.field(factory=list, repr=False)
    """Connections on which the client closed (EOF or reset) while the server waited to read."""
    writers: dict[int, asyncio.StreamWriter] = attrs.field(factory=dict, repr=False)
    _loop: asyncio.AbstractEventLoop | None = None
    _server: asyncio.Server | None = None
    _thread: threading.Thread | None = None
    _tasks: set[asyncio.Task[None]] = attrs.field(factory=set, repr=False)
    _closed: threading.Condition = attrs.field(factory=threading.Condition)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> HostileNode:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True,
                                        name="hostile-node")
        self._thread.start()
        if not ready.wait(30):
            raise TimeoutError("hostile node did not start")
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop = self._thread = None

    def __enter__(self) -> HostileNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def call(self, func: Callable[[], Awaitable[Any]]) -> Future[Any]:
        """Run a coroutine function on the server's loop (e.g. to write on an idle connection)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(func(), self._loop)

    def wait_closed_by_client(self, connection: int, timeout: float = 60.0) -> bool:
        """Until the client has closed `connection` (True), or `timeout` passed (False)."""
        with self._closed:
            return self._closed.wait_for(lambda: connection in self.closed_by_client, timeout)

    def _run(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, self.host, self.port))
        self.port = self._server.sockets[0].getsockname()[1]
        ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self.connections
        self.connections += 1
        self.writers[number] = writer
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer_port = writer.get_extra_info("peername")[1]
        try:
            if self.on_connect is not None:
                await self.on_connect(writer)
            while True:
                request = await self._read(reader, number, peer_port)
                if request is None:
                    with self._closed:
                        self.closed_by_client.append(number)
                        self._closed.notify_all()
                    return
                self.requests.append(request)
                if not await self.script(request, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            with self._closed:
                self.closed_by_client.append(number)
                self._closed.notify_all()
        except asyncio.CancelledError:
            return  # stopping: ending quietly keeps asyncio from logging the cancelled handler
        finally:
            self._tasks.discard(task)
            writer.close()

    @staticmethod
    async def _read(reader: asyncio.StreamReader, number: int,
                    peer_port: int) -> RawRequest | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length)
        method, path, _ = head.split(b" ", 2)
        return RawRequest(method.decode(), path.decode(), head, body, number, peer_port)
