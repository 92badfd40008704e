"""Slow, idle and greedy clients may not hold the gateway's connections: header and body
deadlines, a bound on a request's head, and a connection limit, on top of uvicorn's httptools
protocol.

uvicorn times out only a kept-alive connection between requests: a client that connects and
sends nothing, or sends its headers a byte at a time (slow loris), or its body a byte at a time,
holds its connection for ever, and `limit_concurrency` counts such connections against everyone.
Here a new connection gets a deadline for its first request's headers; a request that arrives
in pieces gets one for its headers from its first piece and, once they are in, one for its
whole body; bytes trickling in move neither. A connection past a deadline is answered 408
(when nothing has been answered yet) and closed. At `max_connections` open connections a new one
takes the slot of an idle or greedy one, or is answered 503 at once and closed
(sollol.gateway.conn_slots). A request that arrives whole (the common case) starts no timer, so
the request path pays nothing.

httptools and uvicorn grow a request's URL and each header by concatenation, with no limit: an
endless header line cost a gigabyte and seconds of CPU per copy. Here the bytes of a request's
head (request line and headers) are counted before the parser sees them, and the parser is fed
no more than `max_header_bytes` of them; one byte more, or a header past `max_headers`, is
answered 431 and the connection closed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import attrs
import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from sollol.gateway.conn_slots import SlotTable

log = logging.getLogger("sollol.gateway")

LINGER_SECONDS = 2.0
LINGER_BYTES = 4 * 1024 * 1024
"""After a 431, what the client still sends is read and dropped for this long, up to this many
bytes, so that it can read the answer (a close with unread bytes resets the connection)."""


@attrs.frozen
class ClientLimits:
    """The `header_timeout`, `body_timeout`, `max_connections`, `max_client_share`,
    `max_header_bytes` and `max_headers` config keys."""

    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections: int = 1000
    client_share: float = 0.5
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100

    @classmethod
    def from_config(cls, config: Any) -> ClientLimits:
        return cls(float(config["header_timeout"]), float(config["body_timeout"]),
                   int(config["max_connections"]), float(config["max_client_share"]),
                   int(config["max_header_bytes"]), int(config["max_headers"]))


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a request whose head is over a limit."""


def _reply(status: int, reason: str, message: str, retry: bool = False) -> bytes:
    body = json.dumps({"error": message}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n")
    if retry:
        head += "retry-after: 1\r\n"
    return head.encode() + b"\r\n" + body


def guarded_protocol(limits: ClientLimits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol class with `limits` applied (pass as `Config(http=...)`);
    the class's connections share one slot table (one class per server)."""
    slots = SlotTable(limits.max_connections, limits.client_share)
    head_limit = limits.max_header_bytes

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None
        _reading: str | None = None
        """"headers" or "body" while a request is partly received, else None."""
        _head_bytes = 0
        """Bytes of the current request's head (or of what came since the last one) so far."""
        _header_count = 0
        _too_large: str | None = None
        _draining: int | None = None
        """Bytes still to read and drop after a refusal (None: reading requests)."""
        peer = ""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.peer = self.client[0] if self.client else ""
            refusal = slots.admit(self)
            if refusal is not None:
                log.warning("refusing a connection from %s: %s", self.peer, refusal)
                self._refuse(503, "Service Unavailable", refusal, retry=True)
                return
            self._arm(limits.header_timeout, "headers")  # a new connection owes a request
            slots.rest(self)  # and, until it sends one, may give way to another

        def connection_lost(self, exc: Exception | None) -> None:
            slots.remove(self)
            self._disarm()
            super().connection_lost(exc)

        # ---- the slot table's view of this connection

        def serving(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

        def reclaim(self) -> None:
            log.info("closing a connection from %s to give its slot to another client "
                     "(max_connections)", self.peer)
            if self.serving() or self._reading is None:
                self.transport.close()  # idle: nothing is owed to anyone
            else:
                self._refuse(503, "Service Unavailable", "connection closed for another client "
                             "(max_connections, max_client_share); retry shortly", retry=True)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and not self.serving() and self._reading is None:
                slots.rest(self)

        # ---- reading requests

        def data_received(self, data: bytes) -> None:
            if self._draining is not None:
                self._draining -= len(data)
                if self._draining < 0:
                    self.transport.close()
                return
            if self._reading != "body" and self._head_bytes + len(data) > head_limit:
                self._head_data(data)
            else:
                if self._reading != "body":
                    self._head_bytes += len(data)
                self._parse(data)
            # A request that arrived whole armed nothing (the common case costs no timer);
            # one cut between packets gets its deadline from its first partial packet, and
            # later bytes do not move it.
            if self._reading is not None and self._deadline is None \
                    and not self.transport.is_closing():
                seconds = limits.header_timeout if self._reading == "headers" \
                    else limits.body_timeout
                self._arm(seconds, self._reading)

        def _head_data(self, data: bytes) -> None:
            """Data that would take the head past its limit: the parser gets the part that
            fits; when the head ends within it, the rest is read as usual."""
            room = head_limit - self._head_bytes
            self._head_bytes = head_limit
            if room > 0:
                self._parse(data[:room])
            if self.transport.is_closing() or self._draining is not None:
                return  # refused within `room` (malformed, or too many fields)
            if self._head_bytes < head_limit:  # the head was complete within `room`
                self.data_received(data[room:])
                return
            self._too_large = (f"request line and headers are over {head_limit} bytes "
                               "(max_header_bytes)")
            self._refuse_head()

        def _parse(self, data: bytes) -> None:
            """uvicorn's `data_received`, telling a head over a limit from a malformed one."""
            self._unset_keepalive_if_required()
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:  # as uvicorn does (the gateway takes none)
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
            except httptools.HttpParserError:
                if self._too_large is not None:
                    self._refuse_head()
                else:
                    self.logger.warning("Invalid HTTP request received.")
                    self.send_400_response("Invalid HTTP request received.")

        def _refuse_head(self) -> None:
            log.info("closing a connection from %s: %s", self.peer, self._too_large)
            if self.serving():  # a pipelined request: the one being answered is cut too
                self.transport.close()
                return
            self.transport.write(_reply(431, "Request Header Fields Too Large",
                                        self._too_large or ""))
            # Closing with the client's bytes unread would reset the connection, and the
            # client would lose the answer: read and drop what it still sends, for a moment.
            self._disarm()
            self._reading = None
            self._draining = LINGER_BYTES
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self._deadline = self.loop.call_later(LINGER_SECONDS, self.transport.close)
            slots.rest(self)  # its slot is the first to give

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._reading = "headers"
            self._header_count = 0
            slots.wake(self)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._header_count += 1
            if self._header_count > limits.max_headers:
                self._too_large = (f"more than {limits.max_headers} header fields "
                                   "(max_headers)")
                raise _HeadTooLarge(self._too_large)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._disarm()
            self._reading = "body"
            self._head_bytes = 0
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._disarm()
            self._reading = None
            super().on_message_complete()

        def _arm(self, seconds: float, what: str) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._expire, what, seconds)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self, what: str, seconds: float) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            log.info("closing a connection from %s: request %s not received within %.0f s",
                     self.client, what, seconds)
            if self.cycle is not None and not self.cycle.response_complete and what == "body":
                # the app is reading the body: it sees a disconnect and answers nobody
                self.cycle.disconnected = True
                self.cycle.message_event.set()
                started = self.cycle.response_started
            else:
                started = False
            if started:
                self.transport.close()
            else:
                self._refuse(408, "Request Timeout",
                             f"request {what} not received within {seconds:g} s "
                             f"({what[:-1] if what == 'headers' else what}_timeout)")

        def _refuse(self, status: int, reason: str, message: str, retry: bool = False) -> None:
            self.transport.write(_reply(status, reason, message, retry))
            self.transport.close()

    return GuardedHttpToolsProtocol
