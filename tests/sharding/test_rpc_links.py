"""Dead-link detection on a coordinator's connections to rpc-servers (plugins/llamacpp_rpc/links).

A child process stands in for llama-server: it holds connections to two listeners of ours and
echoes what they send. What a cut link then does is tested between network namespaces in
tests/netns/netns_shard_faults.py; here: the right sockets get the options, the connection is
untouched.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sollol_plugins.llamacpp_rpc import links, sockets

CHILD = """
import socket, sys
conns = [socket.create_connection(("127.0.0.1", int(p))) for p in sys.argv[1:]]
reader = conns[0].makefile("rb")
for line in reader:  # echo, so the test sees the connection still works after arming
    conns[0].sendall(line)
"""


@contextlib.contextmanager
def listener() -> Iterator[socket.socket]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.1)
    try:
        yield server
    finally:
        server.close()


def accept(server: socket.socket, child) -> socket.socket:
    while True:
        assert child.alive(), child.log_text()
        with contextlib.suppress(TimeoutError):
            conn, _ = server.accept()
            conn.settimeout(None)
            return conn


def options(pid: int, fd: int) -> dict[str, int]:
    """The child's socket options, read through our own copy of its descriptor."""
    pidfd = os.pidfd_open(pid)
    copy = ctypes.CDLL(None, use_errno=True).syscall(438, pidfd, fd, 0)
    os.close(pidfd)
    assert copy >= 0, os.strerror(ctypes.get_errno())
    with socket.socket(fileno=copy) as sock:
        return {"keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                "user_timeout": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)}


def test_arms_only_the_rpc_connections_and_leaves_them_working(processes) -> None:
    with listener() as shard, listener() as other:
        ports = [shard.getsockname()[1], other.getsockname()[1]]
        child = processes.start("coordinator", [sys.executable, "-c", CHILD, *map(str, ports)])
        to_shard, to_other = accept(shard, child), accept(other, child)
        try:
            armed = links.arm(child.pid, [f"127.0.0.1:{ports[0]}"], 6.0)
            assert len(armed) == 1
            by_peer = {peer[1]: fd for fd, peer in
                       sockets.established_sockets(child.pid).values()}
            assert options(child.pid, by_peer[ports[0]]) == {
                "keepalive": 1, "idle": 2, "user_timeout": 6000}
            assert options(child.pid, by_peer[ports[1]])["keepalive"] == 0  # not an rpc-server
            # our copies of its descriptors are closed; its connection is not
            to_shard.sendall(b"still there\n")
            assert to_shard.makefile("rb").readline() == b"still there\n"
            # an armed socket is not armed again; a new connection would be
            assert links.arm(child.pid, [f"127.0.0.1:{ports[0]}"], 6.0, done=armed) == set()
            assert links.arm(child.pid, [], 6.0) == set()
        finally:
            to_shard.close()
            to_other.close()
            child.stop()
        assert links.arm(child.pid, [f"127.0.0.1:{ports[0]}"], 6.0) == set()  # it is gone


@given(st.floats(min_value=0.001, max_value=1e12))
def test_any_timeout_gives_options_the_kernel_takes(timeout: float) -> None:
    chosen = links.settings(timeout)
    assert chosen[socket.TCP_USER_TIMEOUT] == max(1, int(min(timeout, 32767) * 1000))
    assert chosen[socket.TCP_KEEPIDLE] <= max(1, timeout)  # probing starts before giving up
    with socket.socket() as sock:  # the kernel is the judge of the ranges
        for option, value in chosen.items():
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
            assert sock.getsockopt(socket.IPPROTO_TCP, option) == value


def test_rpc_link_timeout_is_a_setting() -> None:
    from sollol.core.runtime import load
    from sollol.errors import ConfigError

    config, _ = load(overrides={"rpc_link_timeout": 0})
    assert config["rpc_link_timeout"] == 0
    with pytest.raises(ConfigError, match="rpc_link_timeout"):
        load(overrides={"rpc_link_timeout": -1})


def test_rpc_serve_drops_silent_clients(processes, llama_binaries, tmp_path) -> None:
    """`sollol rpc serve` runs ggml-rpc-server as its child and sets the timeout on each client
    connection; SIGTERM reaches the child, and its exit status is the command's."""
    import signal
    import time

    import tomli_w
    from sollol_plugins.llamacpp_rpc.rpc_probe import ProbeError, probe

    from sollol.core.processes import free_port

    port = free_port()
    config = tmp_path / "serve.toml"
    config.write_text(tomli_w.dumps({"llama_cpp_dir": str(llama_binaries.rpc_server.parent),
                                     "plugins": ["llamacpp_rpc"]}))
    serve = processes.start("sollol-rpc-serve", [
        sys.executable, "-m", "sollol", "rpc", "serve", "--port", str(port), "--threads", "1",
        "--client-timeout", "4"], env={**os.environ, "SOLLOL_CONFIG": str(config)})
    while True:
        assert serve.alive(), serve.log_text()
        with contextlib.suppress(ProbeError):
            probe("127.0.0.1", port, 2)
            break
        time.sleep(0.1)
    (child,) = map(int, Path(f"/proc/{serve.pid}/task/{serve.pid}/children").read_text().split())
    client = socket.create_connection(("127.0.0.1", port))  # a coordinator, connected
    mine = client.getsockname()[1]
    try:
        while True:  # the watcher looks every half second
            assert serve.alive(), serve.log_text()
            fds = {peer[1]: fd for fd, peer in sockets.established_sockets(child).values()}
            if mine in fds and options(child, fds[mine])["keepalive"]:
                break
            time.sleep(0.1)
        assert options(child, fds[mine]) == {"keepalive": 1, "idle": 1, "user_timeout": 4000}
    finally:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        client.close()  # with a reset: the rpc-server is never left answering into the void
    serve.popen.send_signal(signal.SIGTERM)
    assert serve.popen.wait() == 128 + signal.SIGTERM
    assert not Path(f"/proc/{child}").exists(), "the rpc-server outlived it (or was not reaped)"
