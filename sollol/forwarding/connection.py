"""One keep-alive HTTP/1.1 connection to a backend: httptools (llhttp) parses its responses, one
at a time, and the body is handed over as it arrives, with backpressure and time limits.

The rule this module enforces: a backend can only answer the request in flight, so stale or
forged bytes never become another request's reply (see `Connection`).
"""

from __future__ import annotations

import asyncio
from collections import deque

import httptools

__all__ = ["MAX_HEAD_BYTES", "MAX_INTERIM", "ConnectFailed", "Connection", "StreamIdle",
           "UpstreamError"]

_MAX_BUFFER = 1 << 20  # stop reading from a backend that is this far ahead of the client
MAX_HEAD_BYTES = 64 * 1024
"""Most bytes of status lines and headers a backend may send for one response."""
MAX_INTERIM = 8
"""Most interim (1xx) responses skipped before the real one."""


class UpstreamError(Exception):
    """The backend connection failed or the backend broke the HTTP protocol."""


class ConnectFailed(UpstreamError):
    """No connection could be opened (refused, unreachable, or connect timeout)."""


class StreamIdle(UpstreamError):
    """A response body went quiet for longer than its idle limit (a stalled stream)."""


class _Stop(Exception):
    """Raised from a parser callback to stop at bytes that must not be there."""


class Connection(asyncio.Protocol):
    """One keep-alive connection; parses one response at a time.

    A backend can only answer the request in flight: bytes that arrive while no request is
    (before it is written, or on an idle keep-alive connection), bytes after a complete response,
    and a second response poison the connection: it is closed, never reused, so stale or forged
    bytes can never become another request's reply.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.loop = asyncio.get_running_loop()
        self.status = 0
        self.content_type = ""
        self.keep_alive = False
        self.active = False  # a request has been written and its response is not finished
        self.headers_done = False
        self.framed = False  # Content-Length or chunked: the body's end is marked
        self.complete = False
        self.received = False
        self.error: BaseException | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.head_bytes = 0  # bytes of status lines and headers so far (interim ones included)
        self.interim = 0  # 1xx responses skipped so far
        self._in_interim = False
        self._violation = ""
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_limit = 0.0
        self.last_progress = 0.0  # loop time body bytes last came in or were taken (idle watch)

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.active or self.complete:
            what = "before any request was sent" if not self.active else "after a complete response"
            self.poison(f"sent {len(data)} bytes {what}")
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.poison("switched protocols, which was never asked for")
            return
        except httptools.HttpParserError as exc:
            self.poison(self._violation or f"bad HTTP: {exc}")
            return
        if not self.headers_done:  # (the parser holds at most one read of unfinished headers)
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES:
                self.poison(f"sent more than {MAX_HEAD_BYTES} bytes of status line and headers")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.complete and exc is None and self.headers_done and not self.framed:
            # A body with neither Content-Length nor chunked framing ends where the server
            # closes the connection (HTTP/1.0 servers, some `Connection: close` replies).
            self.complete = True
            self._wake()
        if not self.complete:
            what = "closed the connection" if exc is None else f"connection lost ({exc})"
            self._fail(UpstreamError(f"backend {what} before the response was complete"))
        self.keep_alive = False

    def poison(self, what: str) -> None:
        """The backend broke the one-request-one-response rule: fail and close this connection."""
        self.keep_alive = False
        self._fail(UpstreamError(f"backend {what}"))
        if self.transport is not None:
            self.transport.abort()

    # ---- httptools callbacks

    def on_message_begin(self) -> None:
        if self.complete:
            self._stop("sent data after a complete response (a Content-Length shorter than "
                       "the body, or a reply to no request)")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > MAX_HEAD_BYTES:
            self._stop(f"sent more than {MAX_HEAD_BYTES} bytes of status line and headers")
        name = name.lower()
        if name == b"content-type":
            self.content_type = value.decode("latin-1")
        elif name == b"content-length":
            self.framed = True
        elif name == b"transfer-encoding":
            # only a final `chunked` marks the end; any other coding runs until close
            self.framed = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # 100 Continue, 103 Early Hints...: not the response; the real one follows
            self.interim += 1
            self._in_interim = True
            self.content_type, self.framed = "", False
            if self.interim > MAX_INTERIM:
                self._stop(f"sent more than {MAX_INTERIM} interim (1xx) responses")
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.last_progress = self.loop.time()
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _MAX_BUFFER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._in_interim:
            self._in_interim = False
            return
        self.complete = True
        self._wake()

    def _stop(self, violation: str) -> None:
        """Stop the parser at bytes that must not be there (a raise inside a callback is how)."""
        self._violation = violation
        raise _Stop

    # ---- used by UpstreamResponse

    def _fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until something new arrives (or the request's deadline fails the connection)."""
        if self.error is not None:
            raise self.error
        self._waiter = waiter = self.loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None
        if self.error is not None:
            raise self.error

    def arm(self, deadline: float) -> None:
        """Fail this request with TimeoutError at loop time `deadline` (one timer per request)."""
        self.disarm()
        self._timer = self.loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        if not self.complete:
            self._fail(TimeoutError())

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def watch_idle(self, seconds: float) -> None:
        """Fail with StreamIdle when the reader waits `seconds` for body bytes that never come.

        One timer per quiet period, not per chunk: when it fires after progress, it is set again
        for the rest of the period. Time the reader spends behind (bytes waiting to be taken,
        reading paused) is not the backend's silence.
        """
        self._idle_limit = seconds
        start = self.last_progress or self.loop.time()
        self._idle_timer = self.loop.call_at(start + seconds, self._check_idle)

    def _check_idle(self) -> None:
        self._idle_timer = None
        if self.complete or self.error is not None:
            return
        now, limit = self.loop.time(), self._idle_limit
        if self.chunks or self.paused:
            self._idle_timer = self.loop.call_at(now + limit, self._check_idle)
        elif now - self.last_progress < limit:
            self._idle_timer = self.loop.call_at(self.last_progress + limit, self._check_idle)
        else:
            self._fail(StreamIdle(f"sent nothing for {limit:g}s (stream_idle_timeout)"))

    def take(self) -> bytes:
        self.last_progress = self.loop.time()
        data = b"".join(self.chunks) if len(self.chunks) != 1 else self.chunks[0]
        self.chunks.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    def reset(self) -> None:
        """Ready for the next request on this connection."""
        self.parser = httptools.HttpResponseParser(self)
        self.status, self.content_type = 0, ""
        self.headers_done = self.framed = self.complete = self.received = False
        self.active = self._in_interim = False
        self._violation = ""
        self.head_bytes = self.interim = 0
        self.error = None

    def reusable(self) -> bool:
        return (self.complete and self.keep_alive and not self.chunks and self.error is None
                and self.transport is not None and not self.transport.is_closing())
