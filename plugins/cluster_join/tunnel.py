"""The mutual-TLS links between the gateway and a joined worker, both ends.

Worker: a `TunnelServer` listens on the LAN with its member certificate. It accepts only a
client certificate signed by the cluster CA *and* whose SHA-256 fingerprint is the gateway's
pin (a member's certificate is signed by the same CA, so the CA alone is not enough). The
service is chosen by ALPN (`sollol-rpc`, `sollol-pool-0`, ...) and piped to 127.0.0.1:<its
port>; the services themselves listen on loopback only.

Gateway: a `TunnelEndpoint` per service of a member listens on 127.0.0.1:0 (what the
coordinators' `--rpc` and the pool use). Each connection accepted opens TLS 1.3 to the worker
with the gateway's client certificate, checks the worker's certificate fingerprint against
the member's pin (impersonation: another member has a valid certificate of the same CA), and
pipes. A worker that vanished is dropped by keepalive/TCP_USER_TIMEOUT after `link_timeout`
and the local connection is closed, so the coordinator and its link watch see the dead link as
they would on plain TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import ssl
from pathlib import Path

import attrs

from .pipe import Pipe, Side

__all__ = ["RPC_SERVICE", "TlsIdentity", "TunnelEndpoint", "TunnelServer", "pool_service",
           "same_pin"]

log = logging.getLogger(__name__)

RPC_SERVICE = "sollol-rpc"
HANDSHAKE_TIMEOUT = 10.0
LINK_TIMEOUT = 20.0
"""Seconds a silent peer is waited for (as `sollol rpc serve --client-timeout`)."""
LINGER = 30.0
"""Seconds a half-closed service connection may take to finish its last reply."""


def pool_service(index: int) -> str:
    """The ALPN name of a worker's `index`-th pool node."""
    return f"sollol-pool-{index}"


def same_pin(fingerprint: str | None, pin: str) -> bool:
    """Is `fingerprint` (hex SHA-256 of a certificate's DER) the pinned one (hex, any case,
    colons allowed)? Constant time."""
    if not fingerprint or not pin:
        return False
    wanted = pin.replace(":", "").lower().encode()
    return hmac.compare_digest(fingerprint.lower().encode(), wanted)


def peer_fingerprint(side: Side) -> str | None:
    """The hex SHA-256 of the certificate the peer of a TLS side presented."""
    ssl_object = side.transport.get_extra_info("ssl_object") if side.transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return hashlib.sha256(der).hexdigest() if der else None


@attrs.frozen
class TlsIdentity:
    """Our certificate and key files and the cluster CA's certificate file (PEM)."""

    cert: Path
    key: Path
    ca: Path

    def context(self, server: bool, alpn: list[str]) -> ssl.SSLContext:
        """TLS 1.3 only, peer certificate required and checked against the cluster CA; the
        host name is not checked: the peer is pinned by fingerprint instead."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(self.ca))
        context.load_cert_chain(str(self.cert), str(self.key))
        context.set_alpn_protocols(alpn)
        return context


@attrs.define
class _Listener:
    """A listening socket with its piped connections and the tasks serving them: both ends."""

    _server: asyncio.Server | None = attrs.field(default=None, init=False)
    _pipes: set[Pipe] = attrs.field(factory=set, init=False)
    _tasks: set[asyncio.Task[None]] = attrs.field(factory=set, init=False)

    def _spawn(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Stop listening and cut every piped connection."""
        if self._server is not None:
            self._server.close()
        await _stop(self._tasks, self._pipes)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


@attrs.define
class TunnelServer(_Listener):
    """The worker's end: TLS on `host:port`, service by ALPN, piped to loopback ports."""

    identity: TlsIdentity
    gateway_pin: str
    """Fingerprint of the gateway's client certificate; may be replaced after a rejoin."""
    services: dict[str, int]
    """ALPN name -> port on 127.0.0.1."""
    host: str = "0.0.0.0"
    port: int = 50053
    link_timeout: float = LINK_TIMEOUT
    max_connections: int = 256

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound (port 0 becomes the one chosen)."""
        assert self._server is not None, "not started"
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def start(self) -> TunnelServer:
        context = self.identity.context(server=True, alpn=list(self.services))
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._accepted, self.host, self.port, ssl=context,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT, reuse_address=True)
        return self

    def _accepted(self) -> Side:
        pipe = Pipe(self.link_timeout, LINGER, self._pipes.discard)
        return pipe.side(remote=True, ready=lambda side: self._admit(pipe, side))

    def _admit(self, pipe: Pipe, side: Side) -> bool:
        peer = side.transport.get_extra_info("peername") if side.transport else None
        if not same_pin(peer_fingerprint(side), self.gateway_pin):
            log.warning("tunnel: refused %s: its certificate is not the gateway's", peer)
            return False
        ssl_object = side.transport.get_extra_info("ssl_object")  # type: ignore[union-attr]
        port = self.services.get(ssl_object.selected_alpn_protocol() or "")
        if port is None:
            log.warning("tunnel: refused %s: no such service", peer)
            return False
        if len(self._pipes) >= self.max_connections:
            log.warning("tunnel: refused %s: %d connections open", peer, len(self._pipes))
            return False
        self._pipes.add(pipe)
        self._spawn(self._connect_local(pipe, port))
        return True

    async def _connect_local(self, pipe: Pipe, port: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: pipe.side(remote=False), "127.0.0.1", port)
        except OSError as exc:
            log.warning("tunnel: service on 127.0.0.1:%d unreachable: %s", port, exc)
            pipe.close()


@attrs.define
class TunnelEndpoint(_Listener):
    """The gateway's end for one service of one member: plain TCP on 127.0.0.1, TLS out."""

    identity: TlsIdentity
    remote_host: str
    remote_port: int
    service: str
    member_pin: str
    """Fingerprint of the member's certificate: the worker must present exactly it."""
    link_timeout: float = LINK_TIMEOUT
    host: str = "127.0.0.1"
    _context: ssl.SSLContext | None = attrs.field(default=None, init=False)

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def address(self) -> str:
        """`127.0.0.1:<port>`: what a coordinator's `--rpc` or the pool connects to."""
        return f"{self.host}:{self.port}"

    async def start(self) -> TunnelEndpoint:
        self._context = self.identity.context(server=False, alpn=[self.service])
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accepted, self.host, 0)
        return self

    def _accepted(self) -> Side:
        pipe = Pipe(self.link_timeout, LINGER, self._pipes.discard)
        self._pipes.add(pipe)
        self._spawn(self._connect_remote(pipe))
        return pipe.side(remote=False)

    async def _connect_remote(self, pipe: Pipe) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.create_connection(
                lambda: pipe.side(remote=True, ready=self._check),
                self.remote_host, self.remote_port, ssl=self._context,
                server_hostname=self.remote_host, ssl_handshake_timeout=HANDSHAKE_TIMEOUT),
                HANDSHAKE_TIMEOUT + 1)
        except (TimeoutError, OSError) as exc:
            log.info("tunnel to %s:%d (%s) failed: %s", self.remote_host, self.remote_port,
                     self.service, exc or type(exc).__name__)
            pipe.close()
            return
        remote = pipe.remote
        if remote is None or remote.transport is None or remote.transport.is_closing():
            pipe.close()  # refused by _check

    def _check(self, side: Side) -> bool:
        if same_pin(peer_fingerprint(side), self.member_pin):
            return True
        log.warning("tunnel to %s:%d (%s) refused: the worker's certificate is not the "
                    "member's (impersonation?)", self.remote_host, self.remote_port, self.service)
        return False


async def _stop(tasks: set[asyncio.Task[None]], pipes: set[Pipe]) -> None:
    for task in list(tasks):
        task.cancel()
    for task in list(tasks):
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    for pipe in list(pipes):
        pipe.close()
    pipes.clear()
    await asyncio.sleep(0)  # let the aborted transports run connection_lost
