"""The write-behind relay's per-link spool: what the coordinator wrote and the link has not yet
carried, in order.

Small backlogs stay in memory; past `ram_limit` bytes the rest goes to an unlinked temporary
file, which is sent with `os.sendfile` (no copy through Python) and emptied whenever the spool
drains. Memory holds only data older than the file's: while the file holds anything, new data
goes behind it. A writer past `max_bytes` waits until the link catches up (it then writes at the
link's pace, as without a relay).
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from collections import deque
from pathlib import Path

import attrs

RAM_LIMIT = 8 * 1024 * 1024
SEND_CHUNK = 4 * 1024 * 1024
"""Most bytes sent per call, so that counters move while a big tensor drains."""


class SpoolClosed(Exception):
    """The spool was closed (the relay session ended) while someone waited on it."""


@attrs.define(eq=False)
class Spool:
    """A FIFO of bytes, written by one thread and sent to a socket by another."""

    folder: Path | None = None
    """Where the temporary file goes (None: the system's temporary folder)."""
    ram_limit: int = RAM_LIMIT
    max_bytes: int = 0
    """Most bytes held at once before `write` waits (0: no limit)."""
    written: int = 0
    sent: int = 0
    _memory: deque[memoryview] = attrs.field(factory=deque)
    _memory_bytes: int = 0
    _file: int | None = None
    _file_written: int = 0
    _file_sent: int = 0
    _closed: bool = False
    _sending: bool = False
    _changed: threading.Condition = attrs.field(factory=threading.Condition)

    @property
    def backlog(self) -> int:
        """Bytes written and not yet sent."""
        return self.written - self.sent

    def write(self, data: bytes | memoryview) -> None:
        """Append `data` (copied); waits while the spool is over `max_bytes`."""
        if not data:
            return
        with self._changed:
            while self.max_bytes and self.backlog >= self.max_bytes and not self._closed:
                self._changed.wait()
            if self._closed:
                raise SpoolClosed
            if self._file_written == self._file_sent and (
                    self._memory_bytes + len(data) <= self.ram_limit):
                self._memory.append(memoryview(bytes(data)))
                self._memory_bytes += len(data)
            else:
                self._append_to_file(data)
            self.written += len(data)
            self._changed.notify_all()

    def send_to(self, sock: socket.socket) -> bool:
        """Wait for data, send some of it on `sock` (blocking); False once closed and empty.
        Raises OSError when the socket fails."""
        with self._changed:
            while self.backlog == 0 and not self._closed:
                self._changed.wait()
            if self._closed:
                return False
            chunk = self._memory[0] if self._memory else None
            offset, count = self._file_sent, min(SEND_CHUNK, self._file_written - self._file_sent)
            fd = self._file
            self._sending = True
        # send outside the lock: the writer goes on appending meanwhile (only this thread
        # removes data, so what we picked stays valid)
        try:
            if chunk is not None:
                n = sock.send(chunk[:SEND_CHUNK])
            else:
                assert fd is not None
                n = os.sendfile(sock.fileno(), fd, offset, count)
        finally:
            with self._changed:
                self._sending = False
                if self._closed:
                    self._drop_file()
        with self._changed:
            if self._closed:
                return False
            if chunk is not None:
                self._memory_bytes -= n
                if n == len(chunk):
                    self._memory.popleft()
                else:
                    self._memory[0] = chunk[n:]
            else:
                self._file_sent += n
                if self._file_sent == self._file_written:  # drained: start the file over
                    os.ftruncate(self._file, 0)
                    self._file_sent = self._file_written = 0
            self.sent += n
            self._changed.notify_all()
        return True

    def close(self) -> None:
        """Drop what is left, wake every waiter and delete the file (idempotent)."""
        with self._changed:
            self._closed = True
            self._memory.clear()
            self._memory_bytes = 0
            if not self._sending:  # else the sender drops it when its call returns
                self._drop_file()
            self._changed.notify_all()

    def _drop_file(self) -> None:
        if self._file is not None:
            os.close(self._file)
            self._file = None

    def _append_to_file(self, data: bytes | memoryview) -> None:
        if self._file is None:
            # unlinked at once: nothing is left on disk whatever happens to this process
            handle, name = tempfile.mkstemp(prefix="sollol-relay-", dir=self.folder)
            os.unlink(name)
            self._file = handle
        view = memoryview(data)
        while view:
            n = os.pwrite(self._file, view, self._file_written)
            self._file_written += n
            view = view[n:]
