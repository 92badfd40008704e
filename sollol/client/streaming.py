"""Streamed replies in the library: chunks as they come, as sync or async iterators.

A stream opens on its first iteration and ends when the reply is complete, when the caller
stops it (`close()` / `aclose()`, leaving a `with` block, breaking out of the loop, or
cancelling the task that reads it) or with the error that cut it. Stopping it closes the
upstream connection, which is how a backend learns to stop generating.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from sollol.dialects.jsonin import from_node
from sollol.dialects.streams import Lines
from sollol.errors import BackendError

if TYPE_CHECKING:
    from sollol.client.tasks import Task

_END = object()


@attrs.frozen
class Chunk:
    """One object of an Ollama NDJSON stream (`/api/chat` or `/api/generate`)."""

    data: Mapping[str, Any]

    @property
    def text(self) -> str:
        """The text this chunk adds."""
        message = self.data.get("message")
        if isinstance(message, Mapping):
            return str(message.get("content") or "")
        return str(self.data.get("response") or "")

    @property
    def thinking(self) -> str:
        message = self.data.get("message")
        source = message if isinstance(message, Mapping) else self.data
        return str(source.get("thinking") or "")

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        message = self.data.get("message")
        return list(message.get("tool_calls") or []) if isinstance(message, Mapping) else []

    @property
    def done(self) -> bool:
        return bool(self.data.get("done"))

    @property
    def done_reason(self) -> str | None:
        return self.data.get("done_reason")


async def chunks(lines: AsyncIterator[bytes]) -> AsyncIterator[Chunk]:
    """Chunks from NDJSON bytes; an `{"error": ...}` object (a cut stream) is raised."""
    split = Lines()  # the gateway's own line splitter (and its line length limit)
    async for piece in lines:
        for line in split.split(piece):
            yield _chunk(line)
    for line in split.rest():
        yield _chunk(line)


def _chunk(line: bytes) -> Chunk:
    try:
        data = from_node(line)
    except ValueError:
        raise BackendError(f"the stream carried a line that is not JSON: {line[:200]!r}") \
            from None
    if not isinstance(data, dict):
        raise BackendError("the stream carried JSON that is not an object")
    if data.get("error") is not None:
        raise BackendError(str(data["error"]))
    return Chunk(data)


Opener = Callable[["Task", dict[str, str]], "AsyncIterator[Chunk]"]
"""Opens a task's stream, filling the dict with where it was routed (route, backend, ...)."""


class _Reader:
    """What both kinds of stream share: the task, how it is opened, and one read on the loop."""

    def __init__(self, task: Task, open_stream: Opener, loop: asyncio.AbstractEventLoop,
                 ) -> None:
        self.task = task
        self._open = open_stream
        self._loop = loop
        self.route: dict[str, str] = {}
        """Where the stream was routed (`route`, `backend`, `policy`, `reason`), once open."""
        self._source: AsyncIterator[Chunk] | None = None
        self.closed = False

    async def _advance(self) -> Any:
        """The next chunk, or `_END`; runs on the cluster's loop (the first read opens it)."""
        if self._source is None:
            self._source = self._open(self.task, self.route)
        try:
            return await anext(self._source)
        except StopAsyncIteration:
            return _END

    def _detach(self) -> Any:
        """The source to close, if it can be closed, now no longer ours."""
        source, self._source = self._source, None
        return source if source is not None and hasattr(source, "aclose") else None


class AsyncChunkStream(_Reader):
    """`async for chunk in stream`; `await stream.aclose()` stops it early.

    Runs on the cluster's loop; when read from another loop, each step hops there.
    """

    def __init__(self, task: Task, open_stream: Opener, loop: asyncio.AbstractEventLoop,
                 ) -> None:
        super().__init__(task, open_stream, loop)
        self._step: asyncio.Future[Any] | None = None

    def __aiter__(self) -> AsyncChunkStream:
        return self

    async def __anext__(self) -> Chunk:
        if self.closed:
            raise StopAsyncIteration
        # each read is a future of its own, so that aclose() from another task or thread can
        # cancel it; cancelling the reading task cancels the read it awaits as well
        step = (asyncio.ensure_future(self._advance()) if _on(self._loop) else
                asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._advance(),
                                                                     self._loop)))
        self._step = step
        try:
            item = await step
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self.closed and task is not None and not task.cancelling():
                raise StopAsyncIteration from None  # aclose() elsewhere ended the stream
            raise
        finally:
            self._step = None
        if item is _END:
            self.closed = True
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        """Stop the stream (cutting the upstream request) if it is still open."""
        self.closed = True
        if self._step is not None:
            self._step.cancel()
        source = self._detach()
        if source is not None:
            # RuntimeError: the cancelled read is still unwinding; it closes the source itself
            with contextlib.suppress(RuntimeError, asyncio.CancelledError):
                if _on(self._loop):
                    await source.aclose()
                else:
                    await asyncio.wrap_future(
                        asyncio.run_coroutine_threadsafe(source.aclose(), self._loop))

    async def __aenter__(self) -> AsyncChunkStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class ChunkStream(_Reader):
    """`for chunk in stream`; `stream.close()` (from any thread) stops it early."""

    def __init__(self, task: Task, open_stream: Opener, loop: asyncio.AbstractEventLoop,
                 ) -> None:
        super().__init__(task, open_stream, loop)
        self._step: concurrent.futures.Future[Any] | None = None
        self._lock = threading.Lock()

    def __iter__(self) -> ChunkStream:
        return self

    def __next__(self) -> Chunk:
        if _on(self._loop):
            raise RuntimeError("a sync stream cannot be read on the cluster's own event loop; "
                               "use the async one (astream_chat, ...)")
        with self._lock:  # close() either sees this step and cancels it, or we see `closed`
            if self.closed:
                raise StopIteration
            step = asyncio.run_coroutine_threadsafe(self._advance(), self._loop)
            self._step = step
        try:
            item = step.result()
        except concurrent.futures.CancelledError:
            self.closed = True
            raise StopIteration from None
        finally:
            self._step = None
        if item is _END:
            self.closed = True
            raise StopIteration
        return item

    def close(self) -> None:
        """Stop the stream (cutting the upstream request); safe from any thread, and twice."""
        with self._lock:
            self.closed = True
            step = self._step
        if step is not None:
            step.cancel()  # the pending read is cancelled on the loop: the upstream is closed
        source = self._detach()
        if source is not None and not _on(self._loop):
            # RuntimeError: already closing because its pending read was cancelled
            with contextlib.suppress(RuntimeError, concurrent.futures.CancelledError):
                asyncio.run_coroutine_threadsafe(source.aclose(), self._loop).result()

    def __enter__(self) -> ChunkStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # a stream dropped half-read must still give its upstream connection back
        if not self.closed and self._source is not None and not self._loop.is_closed():
            with contextlib.suppress(Exception):
                self.close()


def _on(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
