"""A lean HTTP/1.1 client for talking to backends: a pool of keep-alive connections per backend,
and the responses it hands out, streamed as they arrive (one connection's parsing and its
one-request-one-response rule are in `connection.py`).

Why not aiohttp: measured on this machine (docs/performance.md), a proxy built on this client
served about 2x the requests per second of the same proxy on aiohttp's ClientSession and added
half the latency, because the gateway's hot path is "POST a JSON body, relay the reply" and
aiohttp's general machinery (tracing, cookies, redirects, header multidicts) costs more than the
request itself on loopback. The parsing is httptools' (llhttp), as in uvicorn.
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import quote, urlsplit

from sollol.forwarding.connection import (
    MAX_HEAD_BYTES,
    MAX_INTERIM,
    ConnectFailed,
    Connection,
    StreamIdle,
    UpstreamError,
)

__all__ = ["MAX_HEAD_BYTES", "MAX_INTERIM", "ConnectFailed", "StreamIdle", "UpstreamError",
           "UpstreamPool", "UpstreamResponse"]


class UpstreamResponse:
    """A backend's response: status and content type now, the body as it arrives."""

    def __init__(self, pool: UpstreamPool, key: tuple[str, str, int], conn: Connection) -> None:
        self._pool, self._key, self._conn = pool, key, conn
        self.status = conn.status
        self.content_type = conn.content_type
        self._done = False

    async def read(self) -> bytes:
        """The whole body; UpstreamError past the pool's `max_reply` bytes."""
        parts = []
        size = 0
        while chunk := await self.next_chunk():
            size += len(chunk)
            if size > self._pool.max_reply:
                self.close()
                raise UpstreamError(f"backend reply is larger than {self._pool.max_reply} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def watch_idle(self, seconds: float) -> None:
        """From now on, fail with StreamIdle if the body goes quiet for `seconds`."""
        if not self._done:
            self._conn.watch_idle(seconds)

    async def next_chunk(self) -> bytes:
        """The next piece of body as soon as it arrives; b"" at the end."""
        conn = self._conn
        while not conn.chunks:
            if conn.error is not None:
                self.close()
                raise conn.error
            if conn.complete:
                self.release()
                return b""
            await conn.wait()
        return conn.take()

    def release(self) -> None:
        """Give the connection back to the pool if it can carry another request, else close."""
        if self._done:
            return
        self._done = True
        self._pool.give_back(self._key, self._conn)

    def close(self) -> None:
        """Cut the connection (how a backend learns that the client went away)."""
        if not self._done:
            self._done = True
            self._conn.disarm()
            if self._conn.transport is not None:
                self._conn.transport.abort()


class UpstreamPool:
    """Keep-alive connections per backend, reused last-in first-out."""

    def __init__(self, connect_timeout: float = 5.0, max_idle: int = 256,
                 max_reply: int = 64 * 1024 * 1024) -> None:
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.max_reply = max_reply  # largest whole (non-streamed) body a reply's `read` accepts
        self._idle: dict[tuple[str, str, int], list[Connection]] = {}
        self._targets: dict[str, tuple[tuple[str, str, int], bytes, bytes]] = {}
        self._ssl: ssl.SSLContext | None = None

    async def post(self, root: str, path: str, body: bytes, deadline: float,
                   authorization: bytes = b"") -> UpstreamResponse:
        """POST `body` (JSON) to `root` + `path`; return once the status line and headers are in.

        `root` may carry a base path (`http://h:8000/prefix`), which goes before `path`;
        `authorization` is sent as the `Authorization` header when given.
        Raises ConnectFailed, UpstreamError or TimeoutError (at loop time `deadline`).
        """
        key, host_header, prefix = self._target(root)
        auth = b"Authorization: %s\r\n" % authorization if authorization else b""
        head = (b"POST %s%s HTTP/1.1\r\nHost: %s\r\n%sContent-Type: application/json\r\n"
                b"Accept: */*\r\nContent-Length: %d\r\n\r\n"
                % (prefix, path.encode(), host_header, auth, len(body)))
        conn = self._pop_idle(key)
        if conn is not None:
            try:
                return await self._send(key, conn, head + body, deadline)
            except UpstreamError:
                if conn.received:
                    raise
                # The backend closed an idle keep-alive connection as we reused it (nothing of
                # this request was answered): one more try on a fresh connection.
        conn = await self._connect(key, deadline)
        return await self._send(key, conn, head + body, deadline)

    async def _send(self, key: tuple[str, str, int], conn: Connection, data: bytes,
                    deadline: float) -> UpstreamResponse:
        assert conn.transport is not None
        if conn.error is not None or conn.transport.is_closing():
            # it spoke before being asked (or died): nothing it sends can be trusted
            conn.transport.abort()
            raise conn.error or UpstreamError("backend closed the connection before the request")
        conn.active = True
        conn.transport.write(data)
        conn.arm(deadline)
        try:
            while not conn.headers_done:
                await conn.wait()
        except BaseException:
            conn.disarm()
            conn.transport.abort()
            raise
        return UpstreamResponse(self, key, conn)

    async def _connect(self, key: tuple[str, str, int], deadline: float) -> Connection:
        loop = asyncio.get_running_loop()
        scheme, host, port = key
        context = self._ssl_context() if scheme == "https" else None
        timeout = max(0.0, min(self.connect_timeout, deadline - loop.time()))
        try:
            async with asyncio.timeout(timeout):
                _transport, conn = await loop.create_connection(
                    Connection, host, port, ssl=context,
                    server_hostname=host if context else None)
        except TimeoutError:
            raise ConnectFailed(f"connect to {host}:{port} timed out after {timeout:.1f}s") \
                from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {host}:{port}: "
                                f"{exc.strerror or exc}") from None
        return conn

    def give_back(self, key: tuple[str, str, int], conn: Connection) -> None:
        """Keep a finished connection for the next request, or close it."""
        conn.disarm()
        idle = self._idle.setdefault(key, [])
        if conn.reusable() and len(idle) < self.max_idle:
            conn.reset()
            idle.append(conn)
        elif conn.transport is not None:
            conn.transport.abort()  # unfinished or not keep-alive: nothing more to read

    def _pop_idle(self, key: tuple[str, str, int]) -> Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def _target(self, root: str) -> tuple[tuple[str, str, int], bytes, bytes]:
        cached = self._targets.get(root)
        if cached is None:
            parts = urlsplit(root if "://" in root else f"http://{root}")
            # Config may name a node's dialect as its scheme (openai://h:p); it is plain HTTP.
            scheme = "http" if parts.scheme in ("openai", "ollama") else parts.scheme
            if scheme not in ("http", "https") or not parts.hostname:
                raise ConnectFailed(f"unsupported backend URL {root!r}")
            port = parts.port or (443 if scheme == "https" else 80)
            host = parts.netloc.rsplit("@", 1)[-1]  # never user info in a Host header
            prefix = quote(parts.path.rstrip("/"), safe="/%-._~!$&'()*+,;=:@")
            cached = ((scheme, parts.hostname, port), host.encode(), prefix.encode())
            if len(self._targets) >= 1024:  # roots come from config, but stay bounded anyway
                self._targets.clear()
            self._targets[root] = cached
        return cached

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def close(self) -> None:
        """Close every idle connection."""
        for idle in self._idle.values():
            for conn in idle:
                if conn.transport is not None:
                    conn.transport.close()
        self._idle.clear()


def __getattr__(name: str) -> object:
    if name == "Response":  # the name before the layered tree (plugin API 2.x)
        import warnings
        warnings.warn("Response is now UpstreamResponse", DeprecationWarning, stacklevel=2)
        return UpstreamResponse
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
