"""A write-behind relay for one link between a coordinator and one rpc-server (`rpc_load_relay`).

llama-server talks to each rpc-server through one dispatcher thread that is strictly sequential:
it writes a command and, only when the command has a reply, reads the reply before the next one.
SET_TENSOR has no reply, so its send "completes" once the bytes are in the socket, and a load
walks the tensors in file order: shard A's bytes go over A's link, then B's over B's. The links
carry one after another what they could carry at the same time.

The relay listens on loopback in front of one rpc-server. It accepts the coordinator's frames
(`u8 cmd | u64 size | payload`) as fast as they come, keeps them in a spool (relay_spool) and
drains the spool to the rpc-server at the link's pace. So llama-server races through shard A's
tensors and goes on to B and C while A still drains: the links carry at once.

SET_TENSOR_HASH has a reply, and forwarding it would wait for the whole backlog. When the backlog
is not empty and the hash is not known to be in the shard's cache, the relay answers "not
cached" itself; llama-server then sends the data (with cache_flag=1, so an rpc-server with `-c`
still saves it). "Not cached" is always a safe answer: it costs a send, never a wrong weight.
Because the client is strictly sequential, no earlier reply can be pending when the relay answers
locally: the client read every reply before it wrote this command, so our reply cannot overtake
one of the server's. A hash the gateway put into that shard's cache (`rpc_fill_caches`) is
answered "cached" at once and still forwarded in order (the rpc-server then loads the tensor from
its cache); the relay reads and drops the rpc-server's answer, and if it says "not cached" after
all, it ends the session (the tensor was never set: the load must not go on). Every other command
is forwarded in order; replies are copied back as they come.

Failures as without a relay: the rpc-server closes or resets -> the client side is closed at once
(llama-server aborts; the supervisor restarts on the rest); the client closes -> the upstream
connection is reset (RST: an rpc-server answering into a normally closed socket dies of SIGPIPE,
see PROTOCOLS.md). The relay owns its upstream sockets, so it sets keepalive and
TCP_USER_TIMEOUT on them itself (`links.settings`). One client at a time, as an rpc-server.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Collection
from pathlib import Path

import attrs

from . import links
from .relay_spool import Spool, SpoolClosed
from .relay_stats import RelayStats

HELLO, SET_TENSOR, SET_TENSOR_HASH = 14, 6, 7
_HEADER = struct.Struct("<BQ")
_NOT_CACHED, _CACHED = struct.pack("<QB", 1, 0), struct.pack("<QB", 1, 1)
CHUNK = 1024 * 1024
CONNECT_TIMEOUT = 10.0
SEND_TIMEOUT = 1
"""Seconds a send to the rpc-server may block before the drain thread looks up (a whole int)."""
SPOOL_MAX = 4 * 1024**3
"""Most bytes a link's spool holds before the coordinator waits for the link."""


@attrs.define(eq=False)
class Relay:
    """Listens on 127.0.0.1 (an ephemeral port) and relays each client to `upstream`."""

    upstream: str
    known: Collection[int] = frozenset()
    """Hashes known to be in the rpc-server's cache (the gateway filled them)."""
    link_timeout: float = 0.0
    spool_folder: Path | None = None
    on_miss: Callable[[], None] | None = None
    """Called (from a relay thread) when a tensor in `known` was not in the cache after all."""
    stats: RelayStats = attrs.field(init=False)
    server_cache: bool | None = attrs.field(init=False, default=None)
    """Whether the rpc-server had the first tensor it was asked about, the gateway not having
    filled it (then its answers are worth waiting for); None until asked."""
    _listener: socket.socket | None = None
    _thread: threading.Thread | None = None
    _session: _Session | None = None
    _stopping: bool = False

    def __attrs_post_init__(self) -> None:
        self.stats = RelayStats(self.upstream)

    @property
    def address(self) -> str:
        return self.stats.listen

    def start(self) -> Relay:
        listener = socket.create_server(("127.0.0.1", 0))
        self._listener = listener
        self.stats.listen = f"127.0.0.1:{listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True,
                                        name=f"sollol-relay-{self.upstream}")
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listener and the current session (RST upstream); join the thread."""
        self._stopping = True
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        session = self._session
        if session is not None:
            session.end()
        if self._thread is not None:
            self._thread.join(30)
        if self._listener is not None:
            self._listener.close()

    def _serve(self) -> None:
        assert self._listener is not None
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = self._connect()
            if upstream is None or self._stopping:
                _reset(client)  # llama-server aborts, as when the rpc-server is not there
                if upstream is not None:
                    _reset(upstream)
                continue
            self._session = _Session(self, client, upstream)
            if self._stopping:  # stop() may have looked before the session existed
                self._session.end()
            self.stats.sessions += 1
            self.stats.connected, self.stats.lost = True, None
            try:
                self._session.run()
            finally:
                self.stats.connected = False
                self._session = None

    def _connect(self) -> socket.socket | None:
        host, _, port = self.upstream.rpartition(":")
        try:
            sock = socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT)
        except (OSError, ValueError) as exc:
            self.stats.lost = f"cannot connect to {self.upstream}: {exc}"
            return None
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # a send into a full link returns after SEND_TIMEOUT, so the drain thread can stop
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", SEND_TIMEOUT, 0))
        self.stats.armed = False
        if self.link_timeout:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                for option, value in links.settings(self.link_timeout).items():
                    sock.setsockopt(socket.IPPROTO_TCP, option, value)
                self.stats.armed = True
        return sock


class _Session:
    """One client connection and its upstream connection: three threads, one spool."""

    def __init__(self, relay: Relay, client: socket.socket, upstream: socket.socket) -> None:
        self.relay, self.stats = relay, relay.stats
        self.client, self.upstream = client, upstream
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.spool = Spool(folder=relay.spool_folder, max_bytes=SPOOL_MAX)
        self._send_lock = threading.Lock()
        self._end_lock = threading.Lock()
        self._ended = False
        self._unanswered = 0
        """Hash requests answered "cached" here whose rpc-server answers are still to come."""
        self._checking = False
        """The first hash request went to the rpc-server and its answer is awaited."""
        self._first_known = False

    def run(self) -> None:
        threads = [threading.Thread(target=self._drain, daemon=True, name="sollol-relay-drain"),
                   threading.Thread(target=self._replies, daemon=True,
                                    name="sollol-relay-replies")]
        for thread in threads:
            thread.start()
        with contextlib.suppress(OSError, SpoolClosed):
            self._requests()
        self.end()  # the coordinator closed its side (or the session ended already)
        for thread in threads:
            thread.join()
        self.client.close()
        _reset(self.upstream)

    def end(self, upstream_why: str | None = None) -> None:
        """End the session once: drop the spool, wake every thread. When the rpc-server's side
        failed, close the client's side at once (llama-server aborts)."""
        with self._end_lock:
            if self._ended:
                return
            self._ended = True
        if upstream_why is not None:
            self.stats.lost = upstream_why
        self.spool.close()
        self.stats.backlog_bytes = 0
        # a shutdown wakes the threads blocked on a socket; upstream, only reading is shut
        # when the client went: run() then resets it (a FIN could be answered into)
        with contextlib.suppress(OSError):
            self.client.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.upstream.shutdown(socket.SHUT_RD if upstream_why is None else socket.SHUT_RDWR)

    def _requests(self) -> None:
        """Client -> spool, frame by frame; hash requests may be answered here."""
        header = bytearray(_HEADER.size)
        while True:
            if not _recv_exact(self.client, header):
                return
            cmd, size = _HEADER.unpack(header)
            self.stats.accepted_bytes += len(header)
            if cmd in (HELLO, SET_TENSOR_HASH):
                payload = bytearray(size)
                if not _recv_exact(self.client, payload):
                    return
                self.stats.accepted_bytes += size
                if cmd == HELLO:
                    payload[:] = bytes(size)  # no capabilities: the relay speaks plain TCP
                elif self._answer_here(payload):
                    continue
                self.spool.write(bytes(header) + bytes(payload))
                continue
            if cmd == SET_TENSOR:
                self.stats.set_tensors += 1
            self.spool.write(bytes(header))
            self._stream(size)
            self.stats.backlog_bytes = backlog = self.spool.backlog
            self.stats.backlog_peak = max(self.stats.backlog_peak, backlog)

    def _answer_here(self, payload: bytearray) -> bool:
        """Answer a SET_TENSOR_HASH here when that saves waiting for the backlog; True if so.
        Safe: the client waits for this reply and has read every earlier one (see the top)."""
        (digest,) = struct.unpack_from("<Q", payload, len(payload) - 8)
        if self.relay.server_cache is None and not self._checking:
            # the first one goes through and its answer is read (_replies): whether the shard
            # keeps this model's tensors itself, or lost those the gateway filled, is learnt here
            self._checking, self._first_known = True, digest in self.relay.known
            self.stats.hash_forwarded += 1
            return False
        if digest in self.relay.known:
            # "cached" at once; the command still goes to the rpc-server in order (it loads the
            # tensor from its cache there), and _replies checks and drops the real answer
            with self._send_lock:
                self._unanswered += 1
            self.spool.write(_HEADER.pack(SET_TENSOR_HASH, len(payload)) + bytes(payload))
            self._send(_CACHED)
            self.stats.hash_known += 1
            return True
        if self.spool.backlog == 0 or self.relay.server_cache:
            # a shard that had the first tensor without a fill has its own copy (seeded, an
            # earlier load): its true answers save sending
            self.stats.hash_forwarded += 1
            return False
        self._send(_NOT_CACHED)
        self.stats.hash_local += 1
        return True

    def _send(self, data: bytes | memoryview) -> None:
        with self._send_lock:
            self.client.sendall(data)

    def _stream(self, size: int) -> None:
        buffer = bytearray(min(CHUNK, max(size, 1)))
        view = memoryview(buffer)
        left = size
        while left:
            n = self.client.recv_into(view[:min(left, len(buffer))])
            if n == 0:
                raise SpoolClosed
            self.stats.accepted_bytes += n
            self.spool.write(view[:n])
            left -= n

    def _drain(self) -> None:
        """Spool -> rpc-server at the link's pace."""
        sent = 0
        while True:
            try:
                if not self.spool.send_to(self.upstream):
                    return
            except BlockingIOError:
                continue  # SEND_TIMEOUT passed with the link full: look whether we must stop
            except OSError as exc:
                if not self._ended:
                    self.end(f"the link to {self.relay.upstream} failed: {exc}")
                return
            self.stats.delivered_bytes += self.spool.sent - sent
            sent = self.spool.sent
            self.stats.backlog_bytes = self.spool.backlog

    def _replies(self) -> None:
        """rpc-server -> client, reply by reply (`u64 size | payload`). The replies to hash
        requests answered "cached" here come first: the client sent nothing with a reply since
        (it had its answer), and the rpc-server answers in order."""
        header = bytearray(8)
        why = f"rpc-server {self.relay.upstream} closed the connection"
        try:
            while _recv_exact(self.upstream, header):
                (size,) = struct.unpack("<Q", header)
                with self._send_lock:
                    ours = self._unanswered > 0
                    self._unanswered -= ours
                if not ours and self._checking:
                    self._checking = False
                    answer = bytearray(size)
                    if not _recv_exact(self.upstream, answer):
                        break
                    self._check(answer)
                    self._send(bytes(header) + bytes(answer))
                    continue
                if not ours:
                    self._send(header)
                    self._copy(size)
                    continue
                result = bytearray(size)
                if not _recv_exact(self.upstream, result):
                    break
                if size != 1 or result[0] != 1:
                    # the tensor is not in its cache after all: it was never set, so the load
                    # must not go on (llama-server aborts; it restarts without this knowledge)
                    self.stats.cache_misses += 1
                    if self.relay.on_miss is not None:
                        self.relay.on_miss()
                    why = (f"rpc-server {self.relay.upstream} lacks a tensor the gateway put "
                           "in its cache")
                    break
        except OSError as exc:
            why = f"the link to {self.relay.upstream} failed: {exc}"
        if not self._ended:
            self.end(why)

    def _check(self, answer: bytearray) -> None:
        """The rpc-server's answer for the first hash: does it keep this model's tensors? If
        that hash was one the gateway filled and it is missing, forget the filled ones."""
        cached = answer == b"\x01"
        self.relay.server_cache = cached and not self._first_known
        if cached or not self._first_known:
            return
        self.relay.known = frozenset()
        self.stats.cache_misses += 1
        if self.relay.on_miss is not None:
            self.relay.on_miss()

    def _copy(self, size: int) -> None:
        """`size` bytes of a reply, rpc-server -> client, as they come."""
        buffer = bytearray(min(CHUNK, max(size, 1)))
        view = memoryview(buffer)
        while size:
            n = self.upstream.recv_into(view[:min(size, len(buffer))])
            if n == 0:
                raise OSError("connection closed in the middle of a reply")
            self._send(view[:n])
            size -= n


def _recv_exact(sock: socket.socket, buffer: bytearray) -> bool:
    """Fill `buffer`; False on a clean end of stream before the first byte. OSError otherwise."""
    view, got = memoryview(buffer), 0
    while got < len(buffer):
        n = sock.recv_into(view[got:])
        if n == 0:
            if got:
                raise OSError("connection closed in the middle of a frame")
            return False
        got += n
    return True


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): the peer gets no orderly end it might answer into."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
