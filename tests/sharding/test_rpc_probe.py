"""The RPC health probe against an in-test server that speaks (or fails to speak) the protocol."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest
from sollol_plugins.llamacpp_rpc import attached, health
from sollol_plugins.llamacpp_rpc.rpc_probe import (
    ProbeError,
    ProtocolMismatch,
    compatible,
    format_version,
    probe,
)
from sollol_plugins.llamacpp_rpc.shards import ShardRegistry

from sollol.models import Backend

GIB = 1024**3


class FakeRpcServer:
    """A one-client-at-a-time server: `mode` is "v7", "legacy" (protocol 2) or "silent"."""

    def __init__(self, mode: str, devices: list[tuple[int, int]] | None = None) -> None:
        self.mode = mode
        self.devices = devices or [(3 * GIB, 4 * GIB)]
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.sock.settimeout(0.2)  # before the thread starts: a quick stop() may close it first
        self.port = self.sock.getsockname()[1]
        self.after_close: list[str] = []
        self.commands: list[int] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                self._client(conn)

    def _read(self, conn: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def _client(self, conn: socket.socket) -> None:
        try:
            if self.mode == "silent":
                # Busy serving someone else: no answer until the client has given up.
                conn.settimeout(5)
                cmd, size = struct.unpack("<BQ", self._read(conn, 9))
                self._read(conn, size)
                threading.Event().wait(0.8)
                try:  # a FIN would read as EOF here; only an RST raises
                    data = conn.recv(1)
                    self.after_close.append("eof" if data == b"" else "data")
                except ConnectionResetError:
                    self.after_close.append("reset")
                return
            while True:
                cmd, size = struct.unpack("<BQ", self._read(conn, 9))
                payload = self._read(conn, size)
                self.commands.append(cmd)
                if cmd == 14 and self.mode == "legacy":
                    if size != 0:
                        return  # an old server closes on a HELLO of the wrong size
                    conn.sendall(struct.pack("<Q", 3) + bytes([2, 0, 0]))
                elif cmd == 14:
                    major = 6 if self.mode == "v6" else 7
                    conn.sendall(struct.pack("<Q", 28) + bytes([major, 1, 0, 0]) + bytes(24))
                elif cmd == 15:
                    conn.sendall(struct.pack("<QI", 4, len(self.devices)))
                elif cmd == 11:
                    (index,) = struct.unpack("<I", payload)
                    free, total = self.devices[index]
                    conn.sendall(struct.pack("<QQQ", 16, free, total))
                else:
                    return
        except (ConnectionError, OSError):
            return

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def fake_rpc(request: pytest.FixtureRequest) -> Iterator[FakeRpcServer]:
    server = FakeRpcServer(*request.param)
    try:
        yield server
    finally:
        server.close()


@pytest.mark.parametrize("fake_rpc", [("v7", [(3 * GIB, 4 * GIB), (GIB, 2 * GIB)])],
                         indirect=True)
def test_probe_reads_version_and_memory_per_device(fake_rpc: FakeRpcServer) -> None:
    result = probe("127.0.0.1", fake_rpc.port, timeout=5)
    assert result.version == (7, 1, 0)
    assert [(d.free, d.total) for d in result.devices] == [(3 * GIB, 4 * GIB), (GIB, 2 * GIB)]
    assert result.free == 4 * GIB and result.total == 6 * GIB
    assert fake_rpc.commands == [14, 15, 11, 11]


@pytest.mark.parametrize("fake_rpc", [("legacy",)], indirect=True)
def test_probe_names_an_old_protocol_version(fake_rpc: FakeRpcServer) -> None:
    with pytest.raises(ProtocolMismatch) as info:
        probe("127.0.0.1", fake_rpc.port, timeout=5)
    assert info.value.version == (2, 0, 0)
    assert "2.0.0" in str(info.value)


@pytest.mark.parametrize("fake_rpc", [("silent",)], indirect=True)
def test_probe_of_a_busy_server_times_out_and_resets(fake_rpc: FakeRpcServer) -> None:
    with pytest.raises(ProbeError, match="no reply in time"):
        probe("127.0.0.1", fake_rpc.port, timeout=0.3)
    for _ in range(100):
        if fake_rpc.after_close:
            break
        threading.Event().wait(0.05)
    # RST, not FIN: a real rpc-server would otherwise die of SIGPIPE answering later.
    assert fake_rpc.after_close == ["reset"]


def test_probe_of_a_closed_port_fails_fast() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(ProbeError, match="connect failed"):
        probe("127.0.0.1", port, timeout=2)


def test_compatibility_follows_llama_cpp_rule() -> None:
    assert compatible((7, 0, 0), (7, 0, 0))
    assert compatible((7, 0, 5), (7, 1, 0))
    assert not compatible((7, 2, 0), (7, 1, 0))
    assert not compatible((6, 0, 0), (7, 0, 0))
    assert format_version(None) == "unknown"


@pytest.mark.parametrize("fake_rpc", [("v7",)], indirect=True)
def test_health_hook_reports_memory(fake_rpc: FakeRpcServer) -> None:
    backend = Backend(id="rpc:x", kind="rpc", address=f"127.0.0.1:{fake_rpc.port}")
    report = health.check(backend, 5)
    assert report.healthy and report.version == "7.1.0"
    assert report.memory_free == 3 * GIB and report.memory_total == 4 * GIB


@pytest.mark.parametrize("fake_rpc", [("v7",)], indirect=True)
def test_health_hook_never_probes_an_attached_backend(fake_rpc: FakeRpcServer) -> None:
    address = f"127.0.0.1:{fake_rpc.port}"
    backend = Backend(id="rpc:x", kind="rpc", address=address)
    attached.attach([address], "llama-server:m@127.0.0.1:1")
    try:
        report = health.check(backend, 5)
    finally:
        attached.detach([address])
    assert report.healthy and "not probed" in report.detail
    assert fake_rpc.commands == []


def test_holding_attaches_for_the_block_only_and_keeps_a_coordinators_own() -> None:
    """`sollol shard status --local` marks the pid files' rpc-servers attached while it probes
    the rest; afterwards none of them may stay marked, and one a coordinator of this process
    holds stays its coordinator's."""
    attached.attach(["127.0.0.1:2"], "ours")
    try:
        with attached.holding({"127.0.0.1:1": "pid file", "127.0.0.1:2": "pid file"}):
            assert attached.owner_of("127.0.0.1:1") == "pid file"
            assert attached.owner_of("127.0.0.1:2") == "ours"
        assert attached.all_owners() == {"127.0.0.1:2": "ours"}
        with pytest.raises(RuntimeError), attached.holding({"127.0.0.1:3": "pid file"}):
            raise RuntimeError("a probe failed")
        assert attached.owner_of("127.0.0.1:3") is None
    finally:
        attached.detach(["127.0.0.1:2"])


def test_health_hook_is_firstresult_for_rpc_only(pm) -> None:
    other = Backend(id="x", kind="ollama", address="127.0.0.1:1")
    impls = [i for i in pm.hook.sollol_check_health.get_hookimpls()
             if i.plugin_name == "llamacpp_rpc"]
    assert impls and impls[0].function(backend=other, timeout=1) is None


@pytest.mark.parametrize("fake_rpc", [("v6",)], indirect=True)
async def test_an_incompatible_rpc_server_is_reported_with_both_versions(
    fake_rpc: FakeRpcServer,
) -> None:
    registry = ShardRegistry(timeout=5, client_version=(7, 0, 0))
    address = f"127.0.0.1:{fake_rpc.port}"
    registry.update_backends([Backend(id="rpc:x", kind="rpc", address=address)])
    await registry.probe_free()
    (shard,) = registry.shards.values()
    assert shard.healthy and not shard.usable
    assert shard.incompatible == ("incompatible: rpc-server speaks RPC protocol 6.1.0, the "
                                  "coordinator (llama-server) speaks 7.0.0")
    assert not shard.state().healthy


async def test_a_links_latency_is_its_best_recent_probe_and_a_failure_starts_over(
    rpc_servers,
) -> None:
    """One probe that waited (a busy host, a restarted server's first answer) does not make a
    link look far: placement reads the smallest of the recent round trips. A server that fails
    a probe starts its count again, so a return is judged only after SETTLED_PROBES answers."""
    from sollol_plugins.llamacpp_rpc.shards import SETTLED_PROBES

    from sollol.testing.delay_proxy import DelayProxy

    ((address, _proc),) = rpc_servers(1)
    host, port = address.rsplit(":", 1)
    with DelayProxy(("127.0.0.1", 0), (host, int(port))) as proxy:
        registry = ShardRegistry(timeout=5, client_version=(7, 0, 0))
        registry.update_backends([Backend(id="rpc:x", kind="rpc", address=proxy.address)])
        (shard,) = registry.shards.values()
        await registry.probe(shard)
        quick = shard.latency_s
        assert quick is not None and quick < 0.1
        proxy.delay = 0.1  # every chunk held 100 ms each way from now on
        await registry.probe(shard)
        assert shard.detail.endswith("ms") and float(shard.detail.split()[-2]) >= 200
        assert shard.latency_s == quick and shard.answered == 2
    await registry.probe(shard)  # the proxy is gone: nothing answers there
    assert not shard.healthy and shard.answered == 0 and shard.recent == []
    assert SETTLED_PROBES > 1
