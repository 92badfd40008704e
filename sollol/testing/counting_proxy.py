"""An HTTP proxy in front of a real node that counts the requests it passes, per method and path.

What a test needs to see what a gateway asks of a node (probes, scrapes) without a log parser::

    with CountingProxy("http://127.0.0.1:8080") as proxy:
        ...point the gateway at proxy.address...
        proxy.counts()  # {"GET /health": 12, "GET /v1/models": 12, ...}
"""

from __future__ import annotations

import threading
from collections import Counter

import aiohttp
import attrs
from aiohttp import web

from sollol.client.loop_thread import LoopThread

_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "host",
                  "content-encoding"})


@attrs.define(eq=False)
class CountingProxy:
    """Forward every request to `target` (a server root URL) and count it by "METHOD /path"."""

    target: str
    """Where requests go; may be changed while it runs (the node "loads another model")."""
    host: str = "127.0.0.1"
    port: int = 0
    hide: frozenset[str] = frozenset()
    """Paths answered 404 without reaching the node (a server that lacks those endpoints)."""
    _counts: Counter[str] = attrs.field(factory=Counter)
    _lock: threading.Lock = attrs.field(factory=threading.Lock)
    _loop_thread: LoopThread | None = None
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def counts(self) -> dict[str, int]:
        """Requests so far, by "METHOD /path"."""
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()

    def start(self) -> CountingProxy:
        self._loop_thread = LoopThread("counting-proxy")
        self._loop_thread.run(self._serve())
        return self

    def stop(self) -> None:
        thread, self._loop_thread = self._loop_thread, None
        if thread is not None:
            thread.run(self._close())
            thread.stop()

    def __enter__(self) -> CountingProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _serve(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            self._counts[f"{request.method} {request.path}"] += 1
        if request.path in self.hide:
            return web.json_response({"error": {"code": 404, "message": "File Not Found",
                                                "type": "not_found_error"}}, status=404)
        if self._session is None:
            self._session = aiohttp.ClientSession(auto_decompress=False, trust_env=False)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        reply = web.StreamResponse(status=502)
        try:
            async with self._session.request(request.method, self.target + request.path_qs,
                                             headers=headers, data=await request.read(),
                                             allow_redirects=False) as upstream:
                reply = web.StreamResponse(status=upstream.status, headers={
                    k: v for k, v in upstream.headers.items() if k.lower() not in _HOP})
                await reply.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await reply.write(chunk)
                await reply.write_eof()
        except (ConnectionError, aiohttp.ClientError):
            pass  # the node went away, or the client did: the connection just ends
        return reply
