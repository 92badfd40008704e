"""Is a coordinator still connected to its rpc-servers? Read from /proc, with no traffic at all.

We may not probe an rpc-server our coordinator holds (it serves one client), and llama-server's
`/health` does not notice a dead shard. But when an rpc-server dies its kernel closes the
connection, and the coordinator's socket leaves ESTABLISHED (to CLOSE_WAIT, or disappears).
A host that vanishes without closing (power loss, cut cable) is not visible this way: `links`
makes the kernel close such a connection.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
from pathlib import Path

ESTABLISHED = "01"


def established_peers(pid: int) -> set[tuple[str, int]] | None:
    """(ip, port) of every ESTABLISHED TCP peer of `pid`; None when /proc can't tell us."""
    if _socket_fds(pid) is None:
        return None
    return {peer for _fd, peer in established_sockets(pid).values()}


def established_sockets(pid: int) -> dict[str, tuple[int, tuple[str, int]]]:
    """socket inode -> (`pid`'s descriptor for it, (ip, port) of its peer), for every
    ESTABLISHED TCP connection of `pid` (empty when /proc can't tell us)."""
    fds = _socket_fds(pid) or {}
    found: dict[str, tuple[int, tuple[str, int]]] = {}
    for table, family in (("tcp", 4), ("tcp6", 6)):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != ESTABLISHED or fields[9] not in fds:
                continue
            with contextlib.suppress(ValueError):
                found[fields[9]] = (fds[fields[9]], _decode(fields[2], family))
    return found


def bytes_delivered(pid: int) -> dict[tuple[str, int], int] | None:
    """Bytes each ESTABLISHED TCP peer of `pid` has acknowledged, from iproute2's `ss` (the
    kernel counts them; /proc does not show them). None when `ss` cannot be run."""
    try:
        out = subprocess.run(["ss", "-HtinpO", "state", "established"], capture_output=True,
                             text=True, timeout=5, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    marker = f"pid={pid},"
    delivered: dict[tuple[str, int], int] = {}
    for line in out.splitlines():
        fields = line.split()
        if marker not in line or len(fields) < 4:
            continue
        host, _, port = fields[3].rpartition(":")
        acked = _ACKED.search(line)
        with contextlib.suppress(ValueError):
            delivered[(_plain(host.strip("[]")), int(port))] = int(acked.group(1)) if acked else 0
    return delivered


_ACKED = re.compile(r"\bbytes_acked:(\d+)")


def resolve(address: str) -> set[tuple[str, int]]:
    """The (ip, port) pairs a host:port may be connected at."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (OSError, ValueError):
        return set()
    return {(_plain(info[4][0]), int(port)) for info in infos}


def _socket_fds(pid: int) -> dict[str, int] | None:
    """socket inode -> one of `pid`'s descriptors for it; None when /proc can't tell us."""
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    fds = {}
    for name in names:
        with contextlib.suppress(OSError, ValueError):
            target = os.readlink(f"/proc/{pid}/fd/{name}")
            if target.startswith("socket:["):
                fds[target[8:-1]] = int(name)
    return fds


def _decode(text: str, family: int) -> tuple[str, int]:
    hex_ip, hex_port = text.split(":")
    raw = bytes.fromhex(hex_ip)
    # /proc prints each 32-bit word in host (little-endian) order
    data = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    ip = socket.inet_ntop(socket.AF_INET if family == 4 else socket.AF_INET6, data)
    return _plain(ip), int(hex_port, 16)


def _plain(ip: str) -> str:
    return ip.removeprefix("::ffff:")
