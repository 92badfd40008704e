"""Gateway-filled rpc-server caches (`rpc_fill_caches`): each shard gets its own big tensors, in
parallel, before the coordinator loads; the load then sends hashes for them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sollol_plugins.llamacpp_rpc import fill, rpc_wire
from sollol_plugins.llamacpp_rpc.seed import HASH_THRESHOLD, fnv1a_64

from sollol.models import RouteRequest
from sollol.routes import Outcome

FF = 3 * 2048 * 8192 * 2
"""Bytes of one layer's three feed-forward tensors (32 MiB each, over the cache threshold)."""


def test_layers_are_cut_where_llama_cpp_cuts_them() -> None:
    # 32 layers + output over three equal shards: 11/11/11 slots, the output on the last
    where = fill.layer_devices(32, [1 / 3] * 3, 99)
    assert [where.count(d) for d in range(3)] == [11, 11, 11] and where[-1] == 2
    assert fill.layer_devices(3, [0.5, 0.5], 99) == [0, 0, 1, 1]
    # -ngl 2 keeps the first two of four slots (layers 0, 1) on the coordinator
    assert fill.layer_devices(3, [0.5, 0.5], 2) == [None, None, 0, 1]
    assert fill.layer_devices(3, [1.0, 0.0], 99) == [0, 0, 0, 0]


@pytest.fixture(scope="module")
def three_layer_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sollol.testing.tiny_models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("fill") / "fill.gguf", layers=3, dim=2048,
                           ff=8192, seed=7)


def start_shards(processes, llama_binaries, tmp_path: Path, caches: list[bool]):
    """rpc-servers on loopback, with (`-c`, an empty cache folder each) or without a cache."""
    from sollol.core.processes import free_port, wait_port

    shards = []
    for index, cached in enumerate(caches):
        port = free_port()
        root = tmp_path / f"llama-cache-{index}"
        proc = processes.start(f"rpc-{index}", [
            llama_binaries.rpc_server, "-H", "127.0.0.1", "-p", str(port), "-t", "1",
            *(["-c"] if cached else [])], env={**os.environ, "LLAMA_CACHE": str(root)})
        wait_port("127.0.0.1", port, process=proc)
        shards.append((f"127.0.0.1:{port}", port, root / "rpc"))
    return shards


def delivered_per_shard(coord, shards) -> dict[str, int]:
    from sollol_plugins.llamacpp_rpc import sockets

    if coord.relays is not None:  # the coordinator's own sockets reach its relays only
        return coord.relays.delivered()
    peers = sockets.bytes_delivered(coord.proc.pid)
    return {a: sum(n for (_ip, p), n in peers.items() if p == port) for a, port, _ in shards}


@pytest.mark.llamacpp
@pytest.mark.parametrize("relay", [False, True], ids=["direct", "relayed"])
async def test_a_filled_load_sends_hashes_and_each_shard_holds_only_its_tensors(
    processes, llama_binaries, sharding_route, three_layer_model: Path, tmp_path: Path,
    relay: bool,
) -> None:
    from gguf import GGUFReader
    from sollol_plugins.llamacpp_rpc.shard_status import render
    from test_sharding_route import chat

    shards = start_shards(processes, llama_binaries, tmp_path, [True, True])
    route = await sharding_route([a for a, _, _ in shards], rpc_placement="all",
                                 rpc_fill_caches=True, rpc_verbose_log=True,
                                 rpc_state_dir=str(tmp_path / "state"), rpc_load_relay=relay)
    lease = await route.acquire(RouteRequest(model=str(three_layer_model)))
    try:
        coord = route.supervisor.coordinators[str(three_layer_model)]
        delivered = delivered_per_shard(coord, shards)
        reply = await chat(lease.base_url, 4)
        snapshot = route.snapshot()
        state = snapshot["coordinators"][0]["cache_fill"]
    finally:
        lease.release(Outcome(ok=True))
    shown = render(snapshot)  # `sollol shard status`
    assert all(f"{a} {state[a]['tensors']}/{state[a]['tensors']} tensors" in shown
               for a, _, _ in shards) and "cache fill: " in shown
    big = [t for t in GGUFReader(three_layer_model).tensors if int(t.n_bytes) > HASH_THRESHOLD]
    for address, _port, cache in shards:
        layers = set(coord.report.share(address).layers)
        assert layers  # both shards hold layers: the test means something for each
        own = [t for t in big if int(t.name.split(".")[1]) in layers]
        # the gateway sent this shard exactly its own big tensors, and nothing else
        assert sorted(p.name for p in cache.iterdir()) == sorted(
            f"{fnv1a_64(t.data.tobytes()):016x}" for t in own)
        assert state[address]["state"] == "done"
        assert state[address]["sent_bytes"] == state[address]["bytes"] == sum(
            int(t.n_bytes) for t in own)
        # ... and the coordinator sent hashes for them, not the weights
        weights = coord.report.share(address).weights_mib * 2**20
        assert delivered[address] < weights - 0.9 * sum(int(t.n_bytes) for t in own)
    assert sum(delivered.values()) < three_layer_model.stat().st_size - 0.9 * FF * 3
    assert reply
    # a restart on the same shards does not read and hash the model again
    assert await route.supervisor.unload(str(three_layer_model), "test")
    lease = await route.acquire(RouteRequest(model=str(three_layer_model)))
    lease.release(Outcome(ok=True))
    again = route.snapshot()["coordinators"][0]["cache_fill"]
    assert {s["state"] for s in again.values()} == {"done: filled earlier by this gateway"}
    assert all(s["sent_bytes"] == 0 for s in again.values())
    if relay:
        await relay_trusts_the_fill_until_a_cache_is_emptied(route, three_layer_model, shards)
        await route.stop()
        await relay_asks_a_shard_that_keeps_the_model(sharding_route, three_layer_model, shards,
                                                      tmp_path)


async def relay_trusts_the_fill_until_a_cache_is_emptied(route, model: Path, shards) -> None:
    """The relay answers "cached" itself for the hashes the gateway filled (remembered across
    a restart), after checking the first with the rpc-server; a cache emptied since is noticed
    at that first one and the load goes on without the fill, which is forgotten."""
    from test_sharding_route import chat

    stats = route.supervisor.coordinators[str(model)].relays.as_dict().values()
    assert all((r["hash_forwarded"], r["hash_local"], r["cache_misses"]) == (1, 0, 0)
               and r["hash_known"] > 0 for r in stats)
    assert await route.supervisor.unload(str(model), "test")
    for _address, _port, cache in shards:
        for entry in cache.iterdir():
            entry.unlink()
    lease = await route.acquire(RouteRequest(model=str(model)))
    try:
        assert await chat(lease.base_url, 4)
        stats = route.snapshot()["coordinators"][0]["relay"].values()
    finally:
        lease.release(Outcome(ok=True))
    assert all(r["cache_misses"] == 1 and r["hash_known"] == 0 for r in stats)
    assert not route.supervisor.filled  # the next start fills again


async def relay_asks_a_shard_that_keeps_the_model(sharding_route, model: Path, shards,
                                                  tmp_path: Path) -> None:
    """No fill, shards whose own caches hold the model (the last load saved it): the relay
    learns that from the first hash and forwards every hash; the weights are not sent again."""
    from test_sharding_route import chat

    route = await sharding_route([a for a, _, _ in shards], rpc_placement="all",
                                 rpc_load_relay=True, rpc_state_dir=str(tmp_path / "state-2"))
    lease = await route.acquire(RouteRequest(model=str(model)))
    try:
        assert await chat(lease.base_url, 4)
        coord = route.supervisor.coordinators[str(model)]
    finally:
        lease.release(Outcome(ok=True))
    for address, relay in coord.relays.relays.items():
        assert relay.server_cache is True
        assert (relay.stats.hash_local, relay.stats.hash_known) == (0, 0)
        assert relay.stats.hash_forwarded > 0
        big = coord.report.share(address).weights_mib * 2**20
        assert relay.stats.delivered_bytes < big / 2  # hashes, not the feed-forward weights


@pytest.mark.llamacpp
async def test_a_load_succeeds_when_the_fill_breaks_off_or_a_shard_keeps_no_cache(
    processes, llama_binaries, sharding_route, three_layer_model: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Shard 0's fill connection drops in the middle of its first tensor (a real half-sent
    SET_TENSOR); shard 1 runs without `-c`. The load goes on and sends the weights itself."""
    from test_sharding_route import chat

    shards = start_shards(processes, llama_binaries, tmp_path, [True, False])
    real = rpc_wire.Connection.send_data

    def breaks_off(self, data, stop, sent):
        if self.sock.getpeername()[1] == shards[0][1]:
            real(self, data[:rpc_wire.CHUNK], stop, sent)
            raise rpc_wire.WireError("link dropped (test)")
        real(self, data, stop, sent)

    monkeypatch.setattr(rpc_wire.Connection, "send_data", breaks_off)
    route = await sharding_route([a for a, _, _ in shards], rpc_placement="all",
                                 rpc_fill_caches=True, rpc_state_dir=str(tmp_path / "state"))
    lease = await route.acquire(RouteRequest(model=str(three_layer_model)))
    try:
        coord = route.supervisor.coordinators[str(three_layer_model)]
        delivered = delivered_per_shard(coord, shards)
        assert await chat(lease.base_url, 4)
        state = route.snapshot()["coordinators"][0]["cache_fill"]
    finally:
        lease.release(Outcome(ok=True))
    first, second = (a for a, _, _ in shards)
    assert state[first]["state"] == "failed: link dropped (test)"
    assert state[second]["state"].startswith("skipped: the rpc-server keeps no cache")
    # the coordinator's load filled shard 0's cache itself; no half-sent tensor is in it
    saved = list(shards[0][2].iterdir())
    assert saved and all(f"{fnv1a_64(f.read_bytes()):016x}" == f.name for f in saved)
    assert not shards[1][2].exists()
    for address, _port, _cache in shards:  # the coordinator sent the weights itself
        assert delivered[address] > coord.report.share(address).weights_mib * 2**20 * 0.9
    assert any("filling the rpc-server caches" in w for w in route.supervisor.warnings)


@pytest.mark.llamacpp
def test_seeding_with_a_known_placement_writes_only_that_shards_layers(
    three_layer_model: Path, tmp_path: Path,
) -> None:
    import json
    import subprocess
    import sys

    from gguf import GGUFReader

    done = subprocess.run([sys.executable, "-m", "sollol", "rpc", "seed", str(three_layer_model),
                           "--layers", "2-3", "--cache", str(tmp_path / "cache"), "--json"],
                          capture_output=True, text=True, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    (report,) = json.loads(done.stdout)
    layer2 = [t for t in GGUFReader(three_layer_model).tensors if t.name.startswith("blk.2.")
              and int(t.n_bytes) > HASH_THRESHOLD]
    assert report["tensors"] == report["written"] == len(layer2) == 3
    assert sorted(p.name for p in (tmp_path / "cache" / "rpc").iterdir()) == sorted(
        f"{fnv1a_64(t.data.tobytes()):016x}" for t in layer2)
    bad = subprocess.run([sys.executable, "-m", "sollol", "rpc", "seed", str(three_layer_model),
                          "--layers", "3-1"], capture_output=True, text=True,
                         env=dict(os.environ))
    assert bad.returncode == 2 and "use e.g. 0-10" in bad.stderr


@pytest.mark.llamacpp
async def test_a_wrong_guess_costs_cache_misses_not_the_load(
    processes, llama_binaries, sharding_route, three_layer_model: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fill puts every layer on the wrong shard: each shard's cache holds the other's
    tensors, the coordinator sends its weights itself, and the model answers."""
    from test_sharding_route import chat

    right = fill.layer_devices
    monkeypatch.setattr(fill, "layer_devices", lambda *a: [
        None if d is None else 1 - d for d in right(*a)])
    shards = start_shards(processes, llama_binaries, tmp_path, [True, True])
    route = await sharding_route([a for a, _, _ in shards], rpc_placement="all",
                                 rpc_fill_caches=True, rpc_state_dir=str(tmp_path / "state"))
    lease = await route.acquire(RouteRequest(model=str(three_layer_model)))
    try:
        coord = route.supervisor.coordinators[str(three_layer_model)]
        delivered = delivered_per_shard(coord, shards)
        assert await chat(lease.base_url, 4)
        state = route.snapshot()["coordinators"][0]["cache_fill"]
    finally:
        lease.release(Outcome(ok=True))
    assert {s["state"] for s in state.values()} == {"done"}
    assert all(s["sent_bytes"] > 0 for s in state.values())  # both got (wrong) tensors
    for address, _port, _cache in shards:  # ... so the coordinator sent the weights itself
        assert delivered[address] > coord.report.share(address).weights_mib * 2**20 * 0.9
