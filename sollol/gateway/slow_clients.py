"""Slow and idle clients may not hold the gateway's connections: header and body deadlines and a
connection limit, on top of uvicorn's httptools protocol.

uvicorn times out only a kept-alive connection between requests: a client that connects and
sends nothing, or sends its headers a byte at a time (slow loris), or its body a byte at a time,
holds its connection for ever, and `limit_concurrency` counts such connections against everyone.
Here a new connection gets a deadline for its first request's headers; a request that arrives
in pieces gets one for its headers from its first piece and, once they are in, one for its
whole body; bytes trickling in move neither. A connection past a deadline is answered 408
(when nothing has been answered yet) and closed. Beyond `max_connections` open connections a
new one is answered 503 at once and closed. A request that arrives whole (the common case)
starts no timer, so the request path pays nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import attrs
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("sollol.gateway")


@attrs.frozen
class ClientLimits:
    """The `header_timeout`, `body_timeout` and `max_connections` config keys."""

    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections: int = 1000

    @classmethod
    def from_config(cls, config: Any) -> ClientLimits:
        return cls(float(config["header_timeout"]), float(config["body_timeout"]),
                   int(config["max_connections"]))


def _reply(status: int, reason: str, message: str, retry: bool = False) -> bytes:
    body = json.dumps({"error": message}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n")
    if retry:
        head += "retry-after: 1\r\n"
    return head.encode() + b"\r\n" + body


def guarded_protocol(limits: ClientLimits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol class with `limits` applied (pass as `Config(http=...)`)."""

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None
        _reading: str | None = None
        """"headers" or "body" while a request is partly received, else None."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                log.warning("%d connections open (max_connections): refusing one from %s",
                            len(self.connections) - 1, self.client)
                self._refuse(503, "Service Unavailable",
                             f"the gateway has {limits.max_connections} connections open "
                             "(max_connections); retry shortly", retry=True)
                return
            self._arm(limits.header_timeout, "headers")  # a new connection owes a request

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            # A request that arrived whole armed nothing (the common case costs no timer);
            # one cut between packets gets its deadline from its first partial packet, and
            # later bytes do not move it.
            if self._reading is not None and self._deadline is None \
                    and not self.transport.is_closing():
                seconds = limits.header_timeout if self._reading == "headers" \
                    else limits.body_timeout
                self._arm(seconds, self._reading)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._reading = "headers"

        def on_headers_complete(self) -> None:
            self._disarm()
            self._reading = "body"
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
