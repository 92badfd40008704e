"""Is a coordinator still connected to its rpc-servers? Read from /proc, with no traffic at all.

We may not probe an rpc-server our coordinator holds (it serves one client), and llama-server's
`/health` does not notice a dead shard. But when an rpc-server dies its kernel closes the
connection, and the coordinator's socket leaves ESTABLISHED (to CLOSE_WAIT, or disappears).
A host that vanishes without closing (power loss, cut cable) is not visible this way.
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
    inodes = _socket_inodes(pid)
    if inodes is None:
        return None
    peers: set[tuple[str, int]] = set()
    for table, family in (("tcp", 4), ("tcp6", 6)):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != ESTABLISHED or fields[9] not in inodes:
                continue
            with contextlib.suppress(ValueError):
                peers.add(_decode(fields[2], family))
    return peers


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


def _socket_inodes(pid: int) -> set[str] | None:
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    inodes = set()
    for name in names:
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{name}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def _decode(text: str, family: int) -> tuple[str, int]:
    hex_ip, hex_port = text.split(":")
    raw = bytes.fromhex(hex_ip)
    # /proc prints each 32-bit word in host (little-endian) order
    data = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    ip = socket.inet_ntop(socket.AF_INET if family == 4 else socket.AF_INET6, data)
    return _plain(ip), int(hex_port, 16)


def _plain(ip: str) -> str:
    return ip.removeprefix("::ffff:")
