"""What the dispatcher hands back: a finished `Reply`, or a `StreamReply` to iterate.

A stream that fails after its first byte ends with an error object in the client's dialect,
never a silent truncation; one that stalls for `stream_idle_timeout` between chunks is cut too.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import attrs

from sollol.core.redact import Redactor, secret_texts
from sollol.dialects.error_shapes import stream_error
from sollol.dialects.passthrough import Passthrough
from sollol.dialects.translate import Stream
from sollol.errors import BackendError, SollolError
from sollol.forwarding.inflight import InFlight
from sollol.forwarding.upstream import StreamIdle, UpstreamError, UpstreamResponse
from sollol.routes import Outcome

NETWORK_ERRORS = (UpstreamError, TimeoutError, OSError)


@attrs.define(eq=False)
class Reply:
    """A finished reply in the client's dialect, with where it was routed."""

    status: int
    content_type: str
    route: dict[str, str]
    body: bytes = b""


@attrs.define(eq=False)
class StreamReply(Reply):
    """A streamed reply whose first upstream chunk has arrived; iterate it, then `aclose()`."""

    _request: InFlight = attrs.field(kw_only=True)
    """The request this reply ends: finished once, when the stream ends or is closed."""
    _response: UpstreamResponse = attrs.field(kw_only=True)
    _stream: Stream = attrs.field(kw_only=True)
    _first: bytes = attrs.field(kw_only=True)
    _started: float = attrs.field(factory=time.perf_counter, kw_only=True)
    _delivered: bool = attrs.field(default=False, kw_only=True)
    """The client has been sent the stream's terminal event (the consumer asked for more after
    it): the reply is a success, whether or not the client waits for the response's end."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        lease = self._request.lease
        secrets = Redactor.of(secret_texts(lease.backend.credentials if lease else None))
        async for chunk in self._chunks():
            # a node with a key may quote it in an error line: the client never sees it
            yield secrets.data(chunk) if secrets else chunk

    async def _chunks(self) -> AsyncIterator[bytes]:
        stream, api = self._stream, self._request.call.api
        try:
            first = stream.feed(self._first)
        except BackendError as exc:  # a line past MAX_LINE already
            yield self._cut(stream, exc)
            return
        if first:
            yield first
            self._delivered = answered(stream)
        try:
            while chunk := await self._response.next_chunk():
                out = stream.feed(chunk)
                if out:
                    yield out
                    self._delivered = self._delivered or answered(stream)
        except (*NETWORK_ERRORS, BackendError) as exc:
            yield self._cut(stream, exc)
            return
        tail = stream.finish()
        if tail:
            yield tail
        if stream.complete:
            self._succeed()
            return
        message = self._request.explained(
            f"stream cut: backend {self._request.backend} closed the stream before it was "
            "complete")
        self._end(Outcome(False, 502, message, seconds=self._elapsed(), first_byte_sent=True))
        yield stream_error(api, message, at_line_start=stream.at_boundary)

    async def aclose(self, reason: str = "client disconnected") -> None:
        """Stop the stream (cancelling the upstream request) if it has not ended yet.

        A client that leaves after its terminal event (Codex closes the connection a
        millisecond after `response.completed`) got its whole answer: a success, not a 499.
        """
        if self._request.finished:
            self._response.release()
        else:
            self._response.close()  # closing the socket is how the backend learns to stop
        if self._delivered:
            self._succeed()
        self._end(Outcome(False, 499, reason, seconds=self._elapsed(), first_byte_sent=True))

    def _succeed(self) -> None:
        stream = self._stream
        self._end(Outcome(stream.error is None, 200, stream.error, tokens=stream.tokens,
                          seconds=self._elapsed(), first_byte_sent=True))

    def _cut(self, stream: Stream, exc: BaseException) -> bytes:
        """End the stream on a failure: the outcome, and the error object for the client."""
        if isinstance(exc, StreamIdle):
            what = f"stalled: it {exc}"
        else:
            what = f"failed mid-stream ({describe_error(exc)})"
        message = self._request.explained(f"stream cut: backend {self._request.backend} {what}")
        timed_out = isinstance(exc, (TimeoutError, StreamIdle))
        self._end(Outcome(False, 504 if timed_out else 502, message,
                          seconds=self._elapsed(), first_byte_sent=True))
        return stream_error(self._request.call.api, message, at_line_start=stream.at_boundary)

    @property
    def at_boundary(self) -> bool:
        """True when what the client got so far ends a line or event (where an error object
        can start without a separator)."""
        return self._stream.at_boundary

    def _elapsed(self) -> float:
        return time.perf_counter() - self._started

    def _end(self, outcome: Outcome) -> None:
        request = self._request
        if not request.finished:
            request.prompt_tokens = self._stream.prompt_tokens
            request.finish(outcome)



def answered(stream: Stream) -> bool:
    """True once the stream's terminal event has been emitted: the end event of its dialect
    (`[DONE]`, `response.completed`, `message_stop`, `done: true`) or, in an OpenAI stream
    passed through, a chunk with a `finish_reason` (clients may stop reading there)."""
    if stream.complete:
        return True
    return isinstance(stream, Passthrough) and stream.finish_seen


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, UpstreamError):
        return str(exc)
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, SollolError) else text
