"""Make the kernel notice a dead link between a coordinator and its rpc-servers.

llama-server sets no timeout on its RPC connections: when an rpc-server's host vanishes without
closing them (a cut cable, a power loss), the coordinator blocks for good, in the middle of a load
or of a token. Reading its socket state from outside does not tell (a connection whose peer went
silent while it computed looks exactly like one that waits for a slow answer, and nothing is left
unacknowledged). And we may not probe an rpc-server our coordinator holds (it serves one client;
see PROTOCOLS.md).

So we borrow the coordinator's own sockets (`pidfd_getfd`, Linux 5.6+: the gateway is its parent,
which ptrace rules allow) and switch on what TCP offers for exactly this: keepalive probes while
it waits (answered by the rpc-server's kernel, so a busy rpc-server is not mistaken for a dead
one, and never seen by the rpc-server process) and `TCP_USER_TIMEOUT` for data left unacknowledged.
After `timeout` seconds without an answer the kernel drops the connection: llama-server exits
("Remote RPC server crashed ...") or the supervisor sees the connection gone and stops it, and it
is restarted on the rpc-servers that answer. `watch` does the same for an rpc-server's clients.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
import stat
from collections.abc import Collection

from .sockets import established_sockets, resolve

_PIDFD_GETFD = 438  # the same number on every Linux architecture (new syscalls are unified)
_libc = ctypes.CDLL(None, use_errno=True)


class CannotArm(OSError):
    """The kernel or our privileges do not let us set options on the coordinator's sockets."""


_MAX_SECONDS = 32767  # the kernel's limit for TCP_KEEPIDLE and TCP_KEEPINTVL
_MAX_PROBES = 127  # and for TCP_KEEPCNT


def settings(timeout: float) -> dict[int, int]:
    """TCP options giving up on a peer silent for about `timeout` seconds: the first keepalive
    probe after a third of it, then one every sixth until it has passed (TCP_USER_TIMEOUT
    decides when; the probe count only matters if it is ignored)."""
    timeout = min(timeout, _MAX_SECONDS)
    interval = max(1, round(timeout / 6))
    return {socket.TCP_KEEPIDLE: max(1, round(timeout / 3)), socket.TCP_KEEPINTVL: interval,
            socket.TCP_KEEPCNT: min(_MAX_PROBES, max(1, round(timeout / interval))),
            socket.TCP_USER_TIMEOUT: max(1, int(timeout * 1000))}


def arm(pid: int, addresses: Collection[str] | None, timeout: float,
        done: Collection[str] = ()) -> set[str]:
    """Set keepalive and user timeout on `pid`'s ESTABLISHED connections to `addresses` (None:
    to anyone), except the sockets (by inode) in `done`; returns the inodes armed now. Raises
    CannotArm."""
    fresh = {inode: found for inode, found in established_sockets(pid).items()
             if inode not in done}
    if not fresh:
        return set()  # the usual case: nothing new since the last look (no name lookups)
    peers = set().union(*(resolve(a) for a in addresses)) if addresses else set()
    targets = {inode: fd for inode, (fd, peer) in fresh.items()
               if addresses is None or peer in peers}
    if not targets:
        return set()
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return set()
    except OSError as exc:
        raise CannotArm(exc.errno, f"pidfd_open: {exc.strerror}") from None
    armed = set()
    try:
        for inode, fd in targets.items():
            copy = _libc.syscall(_PIDFD_GETFD, pidfd, fd, 0)
            if copy < 0:
                code = ctypes.get_errno()
                if code in (errno.EBADF, errno.ESRCH):
                    continue  # closed or exited since we listed it
                raise CannotArm(code, f"pidfd_getfd: {os.strerror(code)}")
            try:
                if _set(copy, inode, timeout):
                    armed.add(inode)
            finally:
                os.close(copy)  # only our copy: the connection stays open, no shutdown sent
    finally:
        with contextlib.suppress(OSError):
            os.close(pidfd)
    return armed


def _set(fd: int, inode: str, timeout: float) -> bool:
    """Set the options on our copy `fd`, if it still is the socket we listed (the descriptor
    may have been closed and reused since); False when it is not."""
    info = os.fstat(fd)
    if not stat.S_ISSOCK(info.st_mode) or str(info.st_ino) != inode:
        return False
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in settings(timeout).items():
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError:
        return False  # closing under us; the next pass sees its replacement, if any
    finally:
        sock.close()
    return True
