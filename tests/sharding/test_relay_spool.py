"""The relay's spool: memory first, then an unlinked file; order kept; emptied when drained."""

from __future__ import annotations

import os
import socket
import threading

import pytest
from sollol_plugins.llamacpp_rpc.relay_spool import Spool, SpoolClosed


def spool_files() -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if "sollol-relay-" in os.readlink(f"/proc/self/fd/{fd}"):
                found.append(fd)
        except OSError:
            pass
    return found


def test_bytes_come_out_in_order_through_memory_and_the_file(tmp_path) -> None:
    spool = Spool(folder=tmp_path, ram_limit=1000)
    sender, receiver = socket.socketpair()
    chunks = [bytes([i]) * size for i, size in enumerate([600, 300, 5000, 10, 70000, 1])]
    for chunk in chunks[:4]:
        spool.write(chunk)
    assert spool_files() and not list(tmp_path.iterdir())  # a file, but unlinked at once
    got = bytearray()

    def read(n: int) -> None:
        while len(got) < n:
            got.extend(receiver.recv(65536))

    while spool.backlog:
        assert spool.send_to(sender)
    read(5910)
    assert spool._file_written == 0  # drained: the file starts over
    spool.write(chunks[4])  # over the limit on its own: to the file
    spool.write(chunks[5])  # behind the file, never ahead of it
    reader = threading.Thread(target=read, args=(sum(map(len, chunks)),))
    reader.start()
    while spool.backlog:
        assert spool.send_to(sender)
    reader.join()
    assert bytes(got) == b"".join(chunks)
    assert spool.written == spool.sent == len(got)
    spool.close()
    assert not spool_files()
    assert not spool.send_to(sender)
    with pytest.raises(SpoolClosed):
        spool.write(b"x")
    sender.close()
    receiver.close()


def test_a_full_spool_holds_the_writer_until_the_link_catches_up() -> None:
    spool = Spool(max_bytes=100)
    sender, receiver = socket.socketpair()
    spool.write(b"a" * 100)
    wrote = threading.Event()
    writer = threading.Thread(target=lambda: (spool.write(b"b"), wrote.set()))
    writer.start()
    assert not wrote.wait(0.2)  # held while 100 bytes wait
    assert spool.send_to(sender)
    writer.join()
    assert wrote.is_set() and spool.backlog == 1
    spool.close()
    sender.close()
    receiver.close()
