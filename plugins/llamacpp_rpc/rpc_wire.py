"""The commands of llama.cpp's RPC protocol (7.x) that fill an rpc-server's tensor cache.

From ggml/src/ggml-rpc/ggml-rpc.cpp of the build SOLLOL uses: SET_TENSOR carries
`rpc_tensor | u8 cache_flag | u64 offset | data`, and a server started with `-c` writes the data to
`<cache>/<fnv1a64 as 16 hex digits>` when cache_flag is 1 (llama-server sets it after a
SET_TENSOR_HASH miss on a weight over 10 MiB). SET_TENSOR_HASH answers 1 when the server has the
file (and copies it into the tensor). So: allocate a buffer, describe it as one flat I8 tensor,
ask for each hash, send the bytes of each miss with the flag set, free the buffer.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable

from .rpc_probe import CAPS_SIZE, HELLO, ProbeError, compatible, format_version

ALLOC_BUFFER, GET_ALIGNMENT, BUFFER_GET_BASE, FREE_BUFFER = 0, 1, 3, 4
SET_TENSOR, SET_TENSOR_HASH = 6, 7
GGML_TYPE_I8 = 24
MAX_DIMS, MAX_OP_PARAMS, MAX_SRC, MAX_NAME = 4, 64, 10, 64
_TENSOR = struct.Struct(f"<QIQ{MAX_DIMS}I{MAX_DIMS}II{MAX_OP_PARAMS // 4}ii{MAX_SRC}QQQQ"
                        f"{MAX_NAME}si")
CHUNK = 4 * 1024 * 1024
assert _TENSOR.size == 296  # sizeof(rpc_tensor), packed


class WireError(ProbeError):
    """The rpc-server refused a command or the connection broke."""


def flat_tensor(buffer: int, data: int, size: int, name: str = "sollol-fill") -> bytes:
    """A packed `rpc_tensor`: `size` bytes of I8 at address `data` of remote buffer `buffer`."""
    return _TENSOR.pack(0, GGML_TYPE_I8, buffer, size, 1, 1, 1, 1, size, size, size, 0,
                        *([0] * (MAX_OP_PARAMS // 4)), 0, *([0] * MAX_SRC), 0, 0, data,
                        name.encode()[:MAX_NAME - 1], 0)


class Connection:
    """One client connection to an rpc-server (it serves one client at a time)."""

    def __init__(self, host: str, port: int, timeout: float,
                 client_version: tuple[int, int, int] | None = None) -> None:
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise WireError(f"cannot connect to {host}:{port}: {exc}") from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reply = self.call(HELLO, bytes(CAPS_SIZE), 4 + CAPS_SIZE)
        self.version = (reply[0], reply[1], reply[2])
        if self.version[0] != 7 or (client_version and not compatible(self.version,
                                                                      client_version)):
            self.close(reset=True)
            raise WireError(f"rpc-server speaks RPC protocol {format_version(self.version)}")

    def close(self, reset: bool = False) -> None:
        """`reset` after a broken-off command: RST, so the server never answers into a closed
        socket (it would die of SIGPIPE)."""
        if reset:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def call(self, cmd: int, payload: bytes, size: int | None) -> bytes:
        """Send a command; read its reply when it has one (`size` not None)."""
        self.send(cmd, payload)
        return b"" if size is None else self._reply(cmd, size)

    def send(self, cmd: int, payload: bytes, extra: int = 0) -> None:
        """Send a command header and `payload`; `extra` more payload bytes follow (send_data)."""
        try:
            self.sock.sendall(struct.pack("<BQ", cmd, len(payload) + extra) + payload)
        except OSError as exc:
            raise WireError(f"command {cmd}: {exc}") from None

    def send_data(self, data: memoryview, stop: Callable[[], bool],
                  sent: Callable[[int], None]) -> None:
        for start in range(0, len(data), CHUNK):
            if stop():
                raise WireError("cancelled")
            try:
                self.sock.sendall(data[start:start + CHUNK])
            except OSError as exc:
                raise WireError(f"sending data: {exc}") from None
            sent(min(CHUNK, len(data) - start))

    def _reply(self, cmd: int, size: int) -> bytes:
        head = self._read(8)
        (length,) = struct.unpack("<Q", head)
        if length != size:
            raise WireError(f"command {cmd}: reply has {length} bytes, expected {size}")
        return self._read(size)

    def _read(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            try:
                chunk = self.sock.recv(n - len(data))
            except OSError as exc:
                raise WireError(f"no reply: {exc}") from None
            if not chunk:
                raise WireError("the rpc-server closed the connection (it refused a command)")
            data += chunk
        return bytes(data)

    # ------------------------------------------------------------------------- the commands

    def alloc(self, size: int, device: int = 0) -> tuple[int, int]:
        """(remote buffer, its base address); WireError when the server has no room."""
        ptr, got = struct.unpack("<QQ", self.call(ALLOC_BUFFER, struct.pack("<IQ", device, size),
                                                  16))
        if not ptr or got < size:
            raise WireError(f"the rpc-server could not allocate {size} bytes")
        (base,) = struct.unpack("<Q", self.call(BUFFER_GET_BASE, struct.pack("<Q", ptr), 8))
        return ptr, base

    def free(self, buffer: int) -> None:
        self.call(FREE_BUFFER, struct.pack("<Q", buffer), None)
        self.call(GET_ALIGNMENT, struct.pack("<I", 0), 8)  # answered: everything before is done

    def has(self, tensor: bytes, digest: int) -> bool:
        """SET_TENSOR_HASH: whether the server's cache holds these bytes (it copies them in)."""
        return self.call(SET_TENSOR_HASH, tensor + struct.pack("<QQ", 0, digest), 1) == b"\x01"

    def store(self, tensor: bytes, data: memoryview, stop: Callable[[], bool],
              sent: Callable[[int], None]) -> None:
        """SET_TENSOR with cache_flag 1: the server saves the bytes under their hash."""
        header = tensor + struct.pack("<BQ", 1, 0)
        self.send(SET_TENSOR, header, extra=len(data))
        self.send_data(data, stop, sent)
