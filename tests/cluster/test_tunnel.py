"""The mutual-TLS tunnel: bytes both ways, who is refused, and real llama.cpp RPC through it."""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
from sollol_plugins.cluster_join.ca import ClusterCA, generate_key_pem, public_key_pem
from sollol_plugins.cluster_join.tunnel import (
    RPC_SERVICE,
    TlsIdentity,
    TunnelEndpoint,
    TunnelServer,
    pool_service,
)

from sollol.client.loop_thread import LoopThread


@attrs.frozen
class Pki:
    ca: ClusterCA
    gateway: TlsIdentity
    members: dict[str, TlsIdentity]
    pins: dict[str, str]
    foreign: TlsIdentity
    """The gateway identity of another cluster (another CA)."""


def _member(ca: ClusterCA, folder: Path, name: str) -> tuple[TlsIdentity, str]:
    from sollol_plugins.cluster_join.ca import fingerprint

    key = generate_key_pem()
    cert = ca.issue(name, public_key_pem(key))
    (folder / f"{name}.key").write_bytes(key)
    (folder / f"{name}.pem").write_text(cert)
    return TlsIdentity(folder / f"{name}.pem", folder / f"{name}.key", ca.ca_cert_path), \
        fingerprint(cert)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = ClusterCA.load_or_create(tmp_path / "ca")
    other = ClusterCA.load_or_create(tmp_path / "other")
    members, pins = {}, {}
    for name in ("w1", "w2"):
        members[name], pins[name] = _member(ca, tmp_path, name)
    return Pki(ca, TlsIdentity(ca.gateway_cert_path, ca.gateway_key_path, ca.ca_cert_path),
               members, pins,
               TlsIdentity(other.gateway_cert_path, other.gateway_key_path, ca.ca_cert_path))


class Service:
    """A loopback TCP service that echoes, counts its connections and records an EOF."""

    def __init__(self, greeting: bytes = b"") -> None:
        self.greeting = greeting
        self.connections = 0
        self.eofs = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(self.greeting)
        while data := await reader.read(1 << 20):
            writer.write(data)
            await writer.drain()
        self.eofs += 1
        writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def _tunnel(pki: Pki, service: Service, member: str = "w1", pin_of: str = "w1",
                  gateway: TlsIdentity | None = None) -> tuple[TunnelServer, TunnelEndpoint]:
    port = await service.start()
    server = await TunnelServer(pki.members[member], pki.ca.gateway_fingerprint,
                                {RPC_SERVICE: port}, host="127.0.0.1", port=0).start()
    endpoint = await TunnelEndpoint(gateway or pki.gateway, "127.0.0.1", server.address[1],
                                    RPC_SERVICE, pki.pins[pin_of]).start()
    return server, endpoint


async def _stop(*things: Any) -> None:
    for thing in things:
        await thing.stop()


async def test_bytes_round_trip_both_ways_and_ends_close(pki: Pki) -> None:
    await _round_trip(pki)


def test_bytes_round_trip_on_uvloop(pki: Pki) -> None:
    """The gateway serves on uvloop (sollol/gateway/server.py): its endpoints run there."""
    import uvloop

    uvloop.run(_round_trip(pki))


async def _round_trip(pki: Pki) -> None:
    service = Service(greeting=b"hello from the worker\n")
    server, endpoint = await _tunnel(pki, service)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
        assert await reader.readexactly(22) == b"hello from the worker\n"  # worker speaks first
        payload = os.urandom(8 * 1024 * 1024)
        writer.write(payload)  # both directions at once: 8 MiB up while it echoes down
        assert await reader.readexactly(len(payload)) == payload
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        writer.write_eof()  # the gateway side ends: the service sees an EOF, then we see ours
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        while service.eofs < 1:
            await asyncio.sleep(0.01)
        assert service.connections == 1
    finally:
        await _stop(endpoint, server, service)


async def test_service_closing_closes_the_gateway_side(pki: Pki) -> None:
    service = Service()
    server, endpoint = await _tunnel(pki, service)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
        await service.stop()  # closes nothing open on 3.11: stop the worker's end instead
        await server.stop()
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
    finally:
        await _stop(endpoint)


async def test_pool_services_are_chosen_by_alpn(pki: Pki) -> None:
    rpc, pool = Service(b"rpc\n"), Service(b"pool\n")
    ports = {RPC_SERVICE: await rpc.start(), pool_service(0): await pool.start()}
    server = await TunnelServer(pki.members["w1"], pki.ca.gateway_fingerprint, ports,
                                host="127.0.0.1", port=0).start()
    endpoints = [await TunnelEndpoint(pki.gateway, "127.0.0.1", server.address[1], name,
                                      pki.pins["w1"]).start() for name in ports]
    unknown = await TunnelEndpoint(pki.gateway, "127.0.0.1", server.address[1],
                                   pool_service(7), pki.pins["w1"]).start()
    try:
        for endpoint, expected in zip(endpoints, (b"rpc\n", b"pool\n"), strict=True):
            reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
            assert await reader.readline() == expected
            writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", unknown.port)
        assert await asyncio.wait_for(reader.read(), 10) == b""  # no such service: closed
        writer.close()
        assert (rpc.connections, pool.connections) == (1, 1)
    finally:
        await _stop(unknown, *endpoints, server, rpc, pool)


def _client_context(pki: Pki, identity: TlsIdentity | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cafile=str(pki.ca.ca_cert_path))
    context.set_alpn_protocols([RPC_SERVICE])
    if identity is not None:
        context.load_cert_chain(str(identity.cert), str(identity.key))
    return context


@pytest.mark.parametrize("who", ["no certificate", "another CA", "a member", "plain TCP"])
async def test_only_the_gateway_certificate_reaches_a_service(pki: Pki, who: str) -> None:
    identity = {"no certificate": None, "another CA": pki.foreign,
                "a member": pki.members["w2"], "plain TCP": None}[who]
    service = Service(greeting=b"secret\n")
    server, endpoint = await _tunnel(pki, service)
    try:
        context = None if who == "plain TCP" else _client_context(pki, identity)
        got = b""
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", server.address[1], ssl=context)
            writer.write(b"\x0e" + bytes(32))  # an rpc HELLO, were anything to listen
            got = await asyncio.wait_for(reader.read(), 15)
            writer.close()
        except (ssl.SSLError, ConnectionError):
            pass  # refused during or right after the handshake
        assert got == b""
        assert service.connections == 0
        # and the gateway's own certificate still gets through
        reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
        assert await reader.readline() == b"secret\n"
        writer.close()
    finally:
        await _stop(endpoint, server, service)


async def test_endpoint_refuses_a_worker_with_another_members_certificate(pki: Pki) -> None:
    service = Service(greeting=b"impostor\n")
    # w2 (a valid certificate of the same CA) answers where w1 is expected
    server, endpoint = await _tunnel(pki, service, member="w2", pin_of="w1")
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
        writer.write(b"weights")
        assert await asyncio.wait_for(reader.read(), 15) == b""
        writer.close()
        assert service.connections == 0
    finally:
        await _stop(endpoint, server, service)


async def test_endpoint_to_nothing_closes_the_connection(pki: Pki) -> None:
    from sollol.core.processes import free_port

    endpoint = await TunnelEndpoint(pki.gateway, "127.0.0.1", free_port(), RPC_SERVICE,
                                    pki.pins["w1"]).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
        assert await asyncio.wait_for(reader.read(), 15) == b""
        writer.close()
    finally:
        await endpoint.stop()


# --------------------------------------------------------------- real llama.cpp RPC through it


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    with LoopThread("test-tunnels") as loop:
        yield loop


@pytest.mark.llamacpp
def test_llama_server_shards_through_the_tunnel_and_sees_the_worker_die(
    pki: Pki, loop_thread: LoopThread, rpc_servers: Callable[..., Any],
    llama_server: Callable[..., Any], tiny_model: Path,
) -> None:
    from sollol_plugins.llamacpp_rpc.sockets import established_peers

    [(address, rpc_proc)] = rpc_servers(1)
    port = int(address.rsplit(":", 1)[1])
    server = loop_thread.run(TunnelServer(pki.members["w1"], pki.ca.gateway_fingerprint,
                                          {RPC_SERVICE: port}, host="127.0.0.1", port=0).start())
    endpoint = loop_thread.run(TunnelEndpoint(pki.gateway, "127.0.0.1", server.address[1],
                                              RPC_SERVICE, pki.pins["w1"]).start())
    try:
        url, coordinator = llama_server(tiny_model, "--rpc", endpoint.address, "-ngl", "99",
                                         "-lv", "4")
        reply = httpx.post(url + "/completion", json={"prompt": "hello", "n_predict": 8,
                                                        "temperature": 0}, timeout=60)
        assert reply.status_code == 200 and reply.json()["tokens_predicted"] > 0
        assert f"RPC0[{endpoint.address}] model buffer size" in coordinator.log_text()
        # the coordinator's link to the shard is its connection to the endpoint: the link
        # watch reads it from /proc; when the worker dies, that connection must close too
        assert ("127.0.0.1", endpoint.port) in (established_peers(coordinator.pid) or set())
        rpc_proc.kill()
        deadline = time.monotonic() + 30
        while ("127.0.0.1", endpoint.port) in (established_peers(coordinator.pid) or set()):
            assert time.monotonic() < deadline, "the coordinator still holds the dead link"
            time.sleep(0.05)
    finally:
        loop_thread.run(endpoint.stop())
        loop_thread.run(server.stop())
