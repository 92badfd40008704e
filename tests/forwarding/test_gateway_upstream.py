"""The gateway's own upstream HTTP client against raw loopback servers: body framing (length,
chunked, close-delimited), keep-alive reuse, a stale idle connection, errors and timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from sollol.core.processes import free_port
from sollol.forwarding.upstream import ConnectFailed, UpstreamError, UpstreamPool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]
"""Answers request number n on one connection; False closes the connection."""


class RawServer:
    """A loopback server that reads whole requests and answers them with `handler`."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests = 0
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            for number in range(100):
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                self.requests += 1
                if not await self.handler(reader, writer, number):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[Handler], Awaitable[RawServer]]]:
    servers: list[RawServer] = []

    async def start(handler: Handler) -> RawServer:
        raw = RawServer(handler)
        raw.server = await asyncio.start_server(raw._serve, "127.0.0.1", 0)
        servers.append(raw)
        return raw

    yield start
    for raw in servers:
        assert raw.server is not None
        raw.server.close()
        for task in raw.tasks:
            task.cancel()
        await asyncio.gather(*raw.tasks, return_exceptions=True)


def reply(data: bytes, close: bool = True) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      number: int) -> bool:
        writer.write(data)
        await writer.drain()
        return not close

    return handler


def deadline(seconds: float = 10.0) -> float:
    return asyncio.get_running_loop().time() + seconds


async def fetch(pool: UpstreamPool, url: str, seconds: float = 10.0) -> tuple[int, bytes]:
    response = await pool.post(url, "/api/chat", b'{"model": "m"}', deadline(seconds))
    return response.status, await response.read()


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n",
])
async def test_framed_bodies_reuse_one_keep_alive_connection(raw_server, data):
    server = await raw_server(reply(data, close=False))
    pool = UpstreamPool()
    for _ in range(3):
        assert await fetch(pool, server.url) == (200, b'{"a":1}')
    assert server.connections == 1 and server.requests == 3
    await pool.close()


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/json\r\n\r\n{\"a\":1}",
    b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"a\":1}",
])
async def test_a_body_ended_by_closing_the_connection_is_complete(raw_server, data):
    server = await raw_server(reply(data, close=True))
    pool = UpstreamPool()
    for _ in range(2):
        assert await fetch(pool, server.url) == (200, b'{"a":1}')
    assert server.connections == 2  # not kept: the server closed it
    await pool.close()


async def test_a_body_cut_short_of_its_content_length_is_an_error(raw_server):
    server = await raw_server(reply(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}"))
    with pytest.raises(UpstreamError, match="before the response was complete"):
        await fetch(UpstreamPool(), server.url)


async def test_error_statuses_are_read_and_the_connection_kept(raw_server):
    server = await raw_server(reply(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 14"
                                    b"\r\n\r\n{\"error\":\"no\"}", close=False))
    pool = UpstreamPool()
    assert await fetch(pool, server.url) == (500, b'{"error":"no"}')
    assert await fetch(pool, server.url) == (500, b'{"error":"no"}')
    assert server.connections == 1
    await pool.close()


async def test_an_idle_connection_the_backend_dropped_is_replaced_once(raw_server):
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"

    async def handler(reader, writer, number):
        if number == 0:
            writer.write(ok)
            await writer.drain()
            return True
        return False  # closes as the reused connection's request arrives: nothing answered

    server = await raw_server(handler)
    pool = UpstreamPool()
    assert await fetch(pool, server.url) == (200, b"{}")
    assert await fetch(pool, server.url) == (200, b"{}")
    assert server.connections == 2 and server.requests == 3
    await pool.close()


async def test_a_silent_backend_times_out_at_the_deadline(raw_server):
    async def silent(reader, writer, number):
        await asyncio.sleep(30)
        return False

    server = await raw_server(silent)
    with pytest.raises(TimeoutError):
        await fetch(UpstreamPool(), server.url, seconds=0.3)


async def test_a_body_that_stalls_times_out_at_the_deadline(raw_server):
    async def stall(reader, writer, number):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
        await writer.drain()
        await asyncio.sleep(30)
        return False

    server = await raw_server(stall)
    response = await UpstreamPool().post(server.url, "/x", b"{}", deadline(0.5))
    assert response.status == 200
    with pytest.raises(TimeoutError):
        await response.read()


async def test_refused_connections_and_bad_urls_are_connect_failures():
    with pytest.raises(ConnectFailed, match="cannot connect"):
        await fetch(UpstreamPool(), f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ConnectFailed, match="unsupported backend URL"):
        await fetch(UpstreamPool(), "ftp://127.0.0.1:1")


async def test_malformed_http_is_an_upstream_error(raw_server):
    server = await raw_server(reply(b"NOT HTTP AT ALL\r\n\r\n"))
    with pytest.raises(UpstreamError, match="bad HTTP"):
        await fetch(UpstreamPool(), server.url)
