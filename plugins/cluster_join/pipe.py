"""Two connections joined into one: bytes flow both ways, and an end closes both, cleanly.

Built on asyncio protocols (no coroutine per chunk): each side's `data_received` writes straight
into the other transport, and a side whose peer's write buffer is full stops reading until it
drains (the transports' own flow control). A side that ends (EOF or error) half-closes the other
when it can (plain TCP: `write_eof`), so a reply still on its way back is delivered and the
server behind never writes into a closed socket (ggml-rpc-server dies of SIGPIPE then); a TLS
side cannot half-close and is closed (with close_notify). A half-closed side that does not end
by itself within `linger` seconds is aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

WRITE_HIGH = 4 * 1024 * 1024
"""Bytes a side may buffer for its peer before the other side stops reading (asyncio's default,
64 KiB, stalls a 1 Gbit/s link on every tensor upload)."""


def tune(transport: asyncio.BaseTransport, link_timeout: float | None) -> None:
    """TCP_NODELAY (llama.cpp RPC does many small round trips), and with `link_timeout`,
    keepalive and TCP_USER_TIMEOUT so a peer that vanished is dropped after about that long."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if link_timeout:
            interval = max(1, round(link_timeout / 6))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            idle = max(1, round(link_timeout / 3))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT,
                            max(1, round(link_timeout / interval)))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT,
                            max(1, int(link_timeout * 1000)))
    if hasattr(transport, "set_write_buffer_limits"):
        transport.set_write_buffer_limits(high=WRITE_HIGH)  # type: ignore[attr-defined]


class Side(asyncio.Protocol):
    """One end of a `Pipe`; `ready` (if given) runs once connected and may refuse it."""

    def __init__(self, pipe: Pipe, ready: Callable[[Side], bool] | None = None) -> None:
        self.pipe = pipe
        self.ready = ready
        self.transport: asyncio.Transport | None = None
        self.done = False
        self.lost = False
        self.peer: Side | None = None
        self.early: list[bytes] = []
        """What arrived before the other side was connected (sent on when it is)."""
        self._linger: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        tune(transport, self.pipe.link_timeout if self.pipe.remote is self else None)
        if self.pipe.closed:
            transport.abort()
            return
        if self.ready is not None and not self.ready(self):
            transport.abort()
            return
        self.pipe.attached(self)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None and not self.pipe.closed:
            self.early.append(data)
            if sum(map(len, self.early)) > WRITE_HIGH and self.transport is not None:
                self.transport.pause_reading()  # resumed when the other side is attached
            return
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            peer.transport.write(data)
        # else: the other end is gone; what this side still sends is dropped

    def eof_received(self) -> bool:
        self.pipe.ended(self)
        # plain TCP: keep our writing half open; TLS cannot (and warns when asked)
        return self.transport is not None and self.transport.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._linger is not None:
            self._linger.cancel()
        self.pipe.ended(self)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def finish(self, linger: float) -> None:
        """The other side ended: half-close when we can, else close."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.done or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        loop = asyncio.get_running_loop()
        self._linger = loop.call_later(linger, transport.abort)


class Pipe:
    """Joins `local` (plain TCP on this machine) and `remote` (TLS to the other machine).

    What the side connected first receives is held until the other is attached (pausing and
    resuming a TLS transport before it has been read from loses data on uvloop); `on_close`
    runs once, when both sides are gone.
    """

    def __init__(self, link_timeout: float | None, linger: float,
                 on_close: Callable[[Pipe], None]) -> None:
        self.link_timeout = link_timeout
        self.linger = linger
        self.on_close = on_close
        self.local: Side | None = None
        self.remote: Side | None = None
        self.closed = False

    def side(self, remote: bool, ready: Callable[[Side], bool] | None = None) -> Side:
        made = Side(self, ready)
        if remote:
            self.remote = made
        else:
            self.local = made
        return made

    def attached(self, side: Side) -> None:
        other = self.remote if side is self.local else self.local
        if other is None or other.transport is None:
            return  # what it sends meanwhile waits in `early`
        side.peer, other.peer = other, side
        for first, second in ((side, other), (other, side)):
            for data in first.early:
                second.transport.write(data)  # type: ignore[union-attr]
            if first.early:
                first.early.clear()
                first.transport.resume_reading()  # type: ignore[union-attr]

    def ended(self, side: Side) -> None:
        first = not side.done
        side.done = True
        other = side.peer or (self.remote if side is self.local else self.local)
        if other is None or other.transport is None:
            self.close()  # the other side never connected
            return
        if first:
            other.finish(self.linger)
        if other.done and side.transport is not None and not side.transport.is_closing():
            side.transport.close()
        if side.lost and other.lost:
            self._closed()

    def close(self) -> None:
        """Abort both sides now (stopping, or the other side could not be reached)."""
        self.closed = True
        for side in (self.local, self.remote):
            if side is not None and side.transport is not None:
                side.transport.abort()
        if all(s is None or s.transport is None or s.lost for s in (self.local, self.remote)):
            self._closed()

    def _closed(self) -> None:
        if self.on_close is not None:
            callback, self.on_close = self.on_close, None  # type: ignore[assignment]
            callback(self)
