"""A TCP proxy that adds latency, for tests on kernels without `netem`.

Every chunk is held `delay` seconds in each direction, in order (a link with that one-way
latency, not a slow one: chunks in flight overlap). The delay can change while it runs::

    with DelayProxy(("10.77.0.1", 0), ("10.77.0.5", 11434)) as proxy:
        proxy.delay = 0.2        # 200 ms each way from now on
        ...proxy.address...      # point the gateway here
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

import attrs


@attrs.define(eq=False)
class DelayProxy:
    """Forward `listen` -> `target`, delaying each chunk by `delay` seconds in each direction."""

    listen: tuple[str, int]
    target: tuple[str, int]
    delay: float = 0.0
    connections: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = attrs.field(factory=set)

    @property
    def address(self) -> str:
        return f"{self.listen[0]}:{self.listen[1]}"

    def start(self) -> DelayProxy:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True,
                                        name="delay-proxy")
        self._thread.start()
        ready.wait(30)
        if self._server is None:
            raise RuntimeError(f"delay proxy could not listen on {self.listen}")
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> DelayProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._accept, *self.listen))
            self.listen = (self.listen[0], self._server.sockets[0].getsockname()[1])
        finally:
            ready.set()
        if self._server is not None:
            loop.run_forever()
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy one direction; each chunk is written `delay` after it was read."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        sender = loop.create_task(send())
        try:
            while True:
                data = await reader.read(65536)
                queue.put_nowait((loop.time() + self.delay, data))
                if not data:
                    break
            await sender
        except OSError:
            # this side was reset: reset the other too, or a server that keeps a connection
            # open (an rpc-server serves one client at a time) would wait on it for good
            writer.transport.abort()
        finally:
            sender.cancel()
