"""The write-behind relay (`rpc_load_relay`) with real rpc-servers and llama-server on loopback.

A valve proxy in front of one rpc-server passes the first bytes of each connection (the
handshake, the buffer allocations) and then holds the rest until the test opens it: a link that
cannot deliver. With the relay, llama-server still gets through that shard's tensors and on to
the next shard's, because the relay accepted them into its spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_rpc_fill import start_shards
from test_sharding_route import chat

from sollol.models import RouteRequest
from sollol.routes import Outcome

pytestmark = [pytest.mark.llamacpp, pytest.mark.slow]
FF = 3 * 2048 * 8192 * 2
"""Bytes of one layer's three feed-forward tensors (32 MiB each, over the hash threshold)."""
HOLD = 40 * 2**20
"""The valve passes a connection's first 40 MiB: the handshake, allocations, layer 0's attention
(4 x 8 MiB) and the first big tensor's hash request, which the relay forwards to learn whether
the shard keeps this model in a cache of its own (it does not)."""


class ValveProxy:
    """TCP proxy: forwards freely until a connection has sent `hold_after` bytes upstream, then
    holds client->server bytes until `open()`; counts what it passed on."""

    def __init__(self, target: tuple[str, int], hold_after: int) -> None:
        self.target, self.hold_after = target, hold_after
        self.opened = threading.Event()
        self.forwarded = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def open(self) -> None:
        self.opened.set()

    def close(self) -> None:
        self.opened.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        for sock in list(self.sockets):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self.threads:
            thread.join(10)
        self.listener.close()
        for sock in self.sockets:
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            self.sockets += [client, upstream]
            for args in ((client, upstream, True), (upstream, client, False)):
                thread = threading.Thread(target=self._pump, args=args, daemon=True)
                self.threads.append(thread)
                thread.start()

    def _pump(self, source: socket.socket, sink: socket.socket, held: bool) -> None:
        passed = 0
        try:
            while data := source.recv(65536):
                if held and passed + len(data) > self.hold_after:
                    self.opened.wait()
                sink.sendall(data)
                passed += len(data)
                if held:
                    self.forwarded += len(data)
        except OSError:
            pass
        for sock in (sink, source):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture(scope="module")
def three_layer_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sollol.testing.tiny_models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("relay") / "relay.gguf", layers=3, dim=2048,
                           ff=8192, seed=7)


async def wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def relayed_load(sharding_route, addresses: list[str], model: str,
                       tmp_path: Path) -> tuple[Any, Any, Any]:
    """A route with the relay on over `addresses`, a load of `model` begun on it (the lease's
    future, not awaited) and its coordinator, once its relays run."""
    route = await sharding_route(addresses, rpc_placement="all", rpc_load_relay=True,
                                 rpc_state_dir=str(tmp_path / "state"))
    acquiring = asyncio.ensure_future(route.acquire(RouteRequest(model=model)))
    await wait_for(lambda: model in route.supervisor.coordinators
                   and route.supervisor.coordinators[model].relays is not None)
    return route, acquiring, route.supervisor.coordinators[model]


def relay_leftovers() -> tuple[list[str], list[str]]:
    """Relay threads alive and spool files open in this process."""
    threads = [t.name for t in threading.enumerate() if t.name.startswith("sollol-relay")]
    spools = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if "sollol-relay-" in os.readlink(f"/proc/self/fd/{fd}"):
                spools.append(fd)
    return threads, spools


async def test_a_relayed_load_writes_behind_a_held_link_and_answers_as_a_direct_one(
    processes, llama_binaries, sharding_route, three_layer_model: Path, tmp_path: Path,
) -> None:
    from sollol_plugins.llamacpp_rpc.health import check
    from sollol_plugins.llamacpp_rpc.shard_status import render

    from sollol.models import Backend

    shards = start_shards(processes, llama_binaries, tmp_path, [False, False])
    valve = ValveProxy(("127.0.0.1", shards[0][1]), hold_after=HOLD)
    try:
        addresses = [valve.address, shards[1][0]]
        model = str(three_layer_model)
        route, acquiring, coord = await relayed_load(sharding_route, addresses, model, tmp_path)
        held, free = (coord.relays.relays[a].stats for a in addresses)
        # llama.cpp loads one shard's tensors, then the other's (in an order of its own): the
        # load gets through both while the held link has carried nothing of the weights
        await wait_for(lambda: free.accepted_bytes > FF and held.accepted_bytes > 2 * FF)
        assert valve.forwarded <= HOLD
        assert held.backlog_bytes > 2 * FF - HOLD - 2**24  # (some sits in socket buffers)
        spool = str(tmp_path / "state" / "spool") + "/sollol-relay-"
        assert any(os.readlink(f"/proc/self/fd/{fd}").startswith(spool)  # on disk, unlinked
                   for fd in relay_leftovers()[1])
        # while it loads: per-shard progress, and nobody probes the held rpc-server
        snapshot = route.snapshot()
        assert "relay: " in render(snapshot)
        assert snapshot["coordinators"][0]["relay"][valve.address]["backlog_bytes"] > 0
        for address in (valve.address, held.listen):
            report = check(Backend(id=address, kind="llama.cpp-rpc", address=address), 1.0)
            assert "not probed" in report.detail
        valve.open()
        lease = await acquiring
        try:
            relayed = await chat(lease.base_url, 8)
        finally:
            lease.release(Outcome(ok=True))
        # shard 0's big tensors after the first were offered as hashes while its backlog
        # waited: answered here ("not cached"), the data followed; shard 1's link kept up
        assert (held.hash_local, held.hash_forwarded) == (5, 1)
        assert free.hash_local + free.hash_forwarded == 3
        assert held.delivered_bytes > 2 * FF and valve.forwarded > 2 * FF
        assert await route.supervisor.unload(model, "test")
        assert relay_leftovers() == ([], [])
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", int(held.listen.rpartition(":")[2])), 1)
    finally:
        valve.close()
    direct = await sharding_route([a for a, _, _ in shards], rpc_placement="all",
                                  rpc_state_dir=str(tmp_path / "state-direct"))
    lease = await direct.acquire(RouteRequest(model=model))
    try:
        assert await chat(lease.base_url, 8) == relayed  # greedy: the relay changes nothing
    finally:
        lease.release(Outcome(ok=True))


async def test_an_rpc_server_killed_mid_load_behind_a_relay_restarts_on_the_rest(
    processes, llama_binaries, sharding_route, three_layer_model: Path, tmp_path: Path,
) -> None:
    """The relay holds shard 0's backlog (its link held) when that rpc-server dies: the relay
    closes the coordinator's side, llama-server aborts, and the model starts on shard 1."""
    shards = start_shards(processes, llama_binaries, tmp_path, [False, False])
    victim = next(p for p in processes.processes if p.name == "rpc-0")
    valve = ValveProxy(("127.0.0.1", shards[0][1]), hold_after=HOLD)
    try:
        addresses = [valve.address, shards[1][0]]
        model = str(three_layer_model)
        route, acquiring, first = await relayed_load(sharding_route, addresses, model, tmp_path)
        held = first.relays.relays[valve.address].stats
        await wait_for(lambda: held.accepted_bytes > FF)
        victim.popen.kill()
        lease = await acquiring
        try:
            second = route.supervisor.coordinators[model]
            assert second is not first and second.plan.addresses == [shards[1][0]]
            assert await chat(lease.base_url, 4)
        finally:
            lease.release(Outcome(ok=True))
        assert not first.alive() and "rpc-server" in (first.error or "")
        assert held.lost is not None and not held.connected
        assert await route.supervisor.unload(model, "test")
        assert relay_leftovers() == ([], [])
    finally:
        valve.close()
