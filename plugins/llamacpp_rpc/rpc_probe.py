"""A health probe that speaks llama.cpp's RPC protocol: HELLO, device count, device memory.

An rpc-server serves one client at a time and `listen()`s with a backlog of one, so a TCP connect
proves nothing: a busy server accepts into the kernel queue and never answers. Every socket is
closed with RST (SO_LINGER 0): a normal close after a timed-out command lets the server answer into
a closed socket later and die of SIGPIPE.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time

import attrs

HELLO = 14
DEVICE_COUNT = 15
GET_DEVICE_MEMORY = 11
CAPS_SIZE = 24
MAX_DEVICES = 64
"""More devices than this in one reply is garbage, not a server."""

Version = tuple[int, int, int]


class ProbeError(Exception):
    """The backend did not answer like an rpc-server; the message says what happened."""


class ProtocolMismatch(ProbeError):
    """The backend answered with an RPC protocol version we do not speak."""

    def __init__(self, message: str, version: Version | None) -> None:
        self.version = version
        super().__init__(message)


@attrs.frozen
class DeviceMemory:
    """Free and total bytes of one device of an rpc-server."""

    index: int
    free: int
    total: int


@attrs.frozen
class RpcProbe:
    """What one probe learned: protocol version and memory per device."""

    version: Version
    devices: tuple[DeviceMemory, ...]
    latency_s: float

    @property
    def version_text(self) -> str:
        return format_version(self.version)

    @property
    def free(self) -> int:
        return sum(d.free for d in self.devices)

    @property
    def total(self) -> int:
        return sum(d.total for d in self.devices)


def format_version(version: Version | None) -> str:
    return "unknown" if version is None else ".".join(str(p) for p in version)


def compatible(server: Version, client: Version) -> bool:
    """llama.cpp's own rule: same major, and the server's minor is not newer than the client's."""
    return server[0] == client[0] and server[1] <= client[1]


def probe(host: str, port: int, timeout: float = 2.0) -> RpcProbe:
    """Ask an rpc-server for its protocol version and device memory, or raise ProbeError."""
    start = time.perf_counter()
    deadline = time.monotonic() + timeout
    with _connect(host, port, timeout) as sock:
        try:
            reply = _command(sock, HELLO, bytes(CAPS_SIZE), deadline)
        except _Closed:
            version = _legacy_version(host, port, deadline)
            msg = (f"RPC protocol {format_version(version)} is not supported (protocol 7+ "
                   "sends a 24-byte HELLO)")
            raise ProtocolMismatch(msg, version) from None
        if len(reply) != 4 + CAPS_SIZE:
            msg = f"HELLO reply has {len(reply)} bytes, expected {4 + CAPS_SIZE}"
            raise ProtocolMismatch(msg, None)
        version = (reply[0], reply[1], reply[2])
        try:
            (count,) = struct.unpack("<I", _command(sock, DEVICE_COUNT, b"", deadline, size=4))
            if not 0 < count <= MAX_DEVICES:
                raise ProbeError(f"rpc-server reports {count} devices")
            devices = []
            for index in range(count):
                body = _command(sock, GET_DEVICE_MEMORY, struct.pack("<I", index), deadline, 16)
                free, total = struct.unpack("<QQ", body)
                devices.append(DeviceMemory(index, free, total))
        except _Closed as exc:
            msg = f"rpc-server {format_version(version)} closed the connection: {exc}"
            raise ProtocolMismatch(msg, version) from None
    return RpcProbe(version, tuple(devices), time.perf_counter() - start)


class _Closed(ProbeError):
    """The peer closed the connection before a full reply."""


@contextlib.contextmanager
def _connect(host: str, port: int, timeout: float):
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError:
        raise ProbeError(f"TCP connect timed out after {timeout:g}s (down, or busy serving "
                         "another client)") from None
    except OSError as exc:
        raise ProbeError(f"TCP connect failed: {exc.strerror or exc}") from None
    # RST on close, always: see the module docstring.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    try:
        yield sock
    finally:
        sock.close()


def _command(sock: socket.socket, cmd: int, payload: bytes, deadline: float,
             size: int | None = None) -> bytes:
    try:
        sock.sendall(struct.pack("<BQ", cmd, len(payload)) + payload)
    except OSError as exc:
        raise _Closed(str(exc)) from None
    (length,) = struct.unpack("<Q", _read(sock, 8, deadline))
    if size is not None and length != size:
        raise ProbeError(f"command {cmd}: reply has {length} bytes, expected {size}")
    if length > 1 << 16:
        raise ProbeError(f"command {cmd}: implausible reply size {length}")
    return _read(sock, length, deadline)


def _read(sock: socket.socket, n: int, deadline: float) -> bytes:
    data = bytearray()
    while len(data) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ProbeError("no reply in time (busy serving another client, or not an "
                             "rpc-server)")
        sock.settimeout(left)
        try:
            chunk = sock.recv(n - len(data))
        except TimeoutError:
            raise ProbeError("no reply in time (busy serving another client, or not an "
                             "rpc-server)") from None
        except OSError as exc:
            raise _Closed(str(exc)) from None
        if not chunk:
            raise _Closed("connection closed")
        data += chunk
    return bytes(data)


def _legacy_version(host: str, port: int, deadline: float) -> Version | None:
    """Protocols before 3.0 took an empty HELLO and replied with 3 version bytes."""
    left = deadline - time.monotonic()
    if left <= 0:
        return None
    try:
        with _connect(host, port, left) as sock:
            reply = _command(sock, HELLO, b"", deadline, size=3)
    except ProbeError:
        return None
    return reply[0], reply[1], reply[2]
