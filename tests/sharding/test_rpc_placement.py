"""Placement: which rpc-servers a sharded model gets, as rules and with real rpc-servers."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sollol_plugins.llamacpp_rpc.plan import DoesNotFit, make_plan, needed_bytes, place
from sollol_plugins.llamacpp_rpc.rpc_probe import DeviceMemory
from sollol_plugins.llamacpp_rpc.shards import Shard, ShardRegistry

from sollol.errors import Overloaded
from sollol.hookspecs import hookimpl
from sollol.models import Backend, RouteRequest, ShardOffer, ShardPlacement
from sollol.routes import Outcome

MiB = 1024**2
A, B, C = "10.0.0.1:50052", "10.0.0.2:50052", "10.0.0.3:50052"


def test_a_model_that_fits_on_one_shard_uses_one() -> None:
    offers = [ShardOffer(A, (4 * MiB,)), ShardOffer(B, (8 * MiB,)), ShardOffer(C, (2 * MiB,))]
    placement = place(3 * MiB, offers)
    assert placement.addresses == (A,)  # the tightest fit: B stays free for a bigger model
    assert placement.numbers["left_out"] == [B, C]
    assert "fits on 1 of 3" in placement.reason and "not needed" in placement.reason


def test_the_fewest_shards_then_the_best_worst_link() -> None:
    offers = [ShardOffer(A, (5 * MiB,), 0.020), ShardOffer(B, (5 * MiB,), 0.001),
              ShardOffer(C, (5 * MiB,), 0.002)]
    assert place(8 * MiB, offers).addresses == (B, C)  # two needed; A's link is the slowest
    assert place(12 * MiB, offers).addresses == (A, B, C)


def test_all_spreads_over_every_free_shard() -> None:
    offers = [ShardOffer(A, (4 * MiB,)), ShardOffer(B, (8 * MiB,))]
    assert place(MiB, offers, "all").addresses == (A, B)


def test_layers_are_split_per_device() -> None:
    offers = [ShardOffer(A, (6 * MiB, 2 * MiB)), ShardOffer(B, (8 * MiB,))]
    placement = place(12 * MiB, offers)
    plan = make_plan("m", 12 * MiB, offers, placement)
    assert plan.tensor_split == "0.3750,0.1250,0.5000"


def test_a_model_that_fits_nowhere_is_refused_with_the_numbers() -> None:
    offers = [ShardOffer(A, (2 * MiB,)), ShardOffer(B, (0,))]
    placement = place(3 * MiB, offers)
    assert placement.addresses == () and placement.numbers["available_bytes"] == 2 * MiB
    with pytest.raises(DoesNotFit, match=r"needs ~0\.00 GiB"):
        make_plan("m", 3 * MiB, offers, placement)


def test_a_plugins_placement_must_name_offered_servers() -> None:
    offers = [ShardOffer(A, (2 * MiB,))]
    with pytest.raises(DoesNotFit, match="not free"):
        make_plan("m", MiB, offers, ShardPlacement((B,)))
    with pytest.raises(DoesNotFit, match="twice"):
        make_plan("m", MiB, offers, ShardPlacement((A, A)))
    bad_split = make_plan("m", MiB, offers, ShardPlacement((A,), split=(0.5, 0.5)))
    assert bad_split.tensor_split == "1.0000"  # a split of the wrong length is not used


def test_declared_memory_and_the_reserve_shape_what_a_shard_offers() -> None:
    shard = Shard(Backend(A, "rpc", A), healthy=True, latency_s=0.003,
                  devices=(DeviceMemory(0, 30 * MiB, 30 * MiB),
                           DeviceMemory(1, 10 * MiB, 10 * MiB)))
    registry = ShardRegistry(timeout=1, limits={A: 20 * MiB}, reserve=MiB)
    assert registry.offer(shard) == ShardOffer(A, (14 * MiB, 4 * MiB), 0.003)
    assert ShardRegistry(timeout=1).offer(shard).free == (30 * MiB, 10 * MiB)


offer_lists = st.lists(
    st.builds(lambda free, latency: (free, latency),
              st.lists(st.integers(0, 64), min_size=1, max_size=3),
              st.one_of(st.none(), st.floats(0, 0.1))),
    min_size=0, max_size=6)


@settings(max_examples=300, deadline=None)
@given(offer_lists, st.integers(1, 200), st.sampled_from(["fewest", "all"]))
def test_every_placement_fits_is_minimal_and_splits_per_device(raw, needed, strategy) -> None:
    offers = [ShardOffer(f"10.0.0.{i}:1", tuple(free), latency)
              for i, (free, latency) in enumerate(raw)]
    placement = place(needed, offers, strategy)
    usable = [o for o in offers if o.total_free > 0]
    if sum(o.total_free for o in usable) < needed:
        assert placement.addresses == ()
        return
    chosen = [o for o in offers if o.address in placement.addresses]
    assert len(set(placement.addresses)) == len(placement.addresses) == len(chosen)
    assert sum(o.total_free for o in chosen) >= needed
    assert len(placement.split) == sum(len(o.free) for o in chosen)
    assert abs(sum(placement.split) - 1) < 0.01
    if strategy == "all":
        assert set(placement.addresses) == {o.address for o in usable}
    else:
        smaller = len(chosen) - 1
        assert not any(sum(o.total_free for o in subset) >= needed
                       for subset in itertools.combinations(usable, smaller))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 3), st.floats(0, 0.004)), min_size=2, max_size=2))
def test_measurement_noise_never_decides_the_placement(noise) -> None:
    """Two CPU rpc-servers on hosts alike report nearly the same RAM, and loopback probes jitter:
    what `sollol route` predicts from one probe and what the start decides from the next must
    name the same rpc-server (issue 28: the route named w1, the layers landed on w2)."""
    ram = 31 * 1024 * MiB
    offers = [ShardOffer(address, (ram + shift * 7 * MiB,), latency)
              for address, (shift, latency) in zip((A, B), noise, strict=True)]
    assert place(2 * 1024 * MiB, offers).addresses == (A,)  # the configured order decides
    assert place(2 * 1024 * MiB, offers[::-1]).addresses == (B,)


# ------------------------------------------------------------------- with real rpc-servers




def model_needs(path: Path, context: int = 4096) -> int:
    from sollol.core.gguf_info import read_model_info

    info = read_model_info(path)
    return needed_bytes(info.file_size, info.kv_bytes_per_token, context)


@pytest.fixture
def two_models(tmp_path: Path, tiny_model: Path) -> tuple[str, str]:
    from sollol.testing.tiny_models import make_tiny_model

    return str(tiny_model), str(make_tiny_model(tmp_path / "other.gguf", seed=7))


@pytest.mark.llamacpp
async def test_two_models_run_at_once_on_disjoint_shards(
    rpc_servers, sharding_route, two_models: tuple[str, str],
) -> None:
    route = await sharding_route([a for a, _ in rpc_servers(2)], rpc_max_coordinators=2)
    first, second = two_models
    leases = [await route.acquire(RouteRequest(model=m)) for m in (first, second)]
    try:
        plans = [route.supervisor.coordinators[m].plan.addresses for m in (first, second)]
        assert [len(p) for p in plans] == [1, 1] and set(plans[0]).isdisjoint(plans[1])
        from test_sharding_route import chat

        replies = await asyncio.gather(*(chat(lease.base_url, 4) for lease in leases))
        assert all(replies)
    finally:
        for lease in leases:
            lease.release(Outcome(ok=True))
    coordinators = route.snapshot()["coordinators"]
    assert all("fits on 1 of" in c["placement"]["reason"] for c in coordinators)


@pytest.mark.llamacpp
@pytest.mark.parametrize("when_busy", ["evict", "wait"])
async def test_a_model_needing_every_shard_evicts_or_waits_as_configured(
    rpc_servers, sharding_route, tmp_path: Path, tiny_model: Path, when_busy: str,
) -> None:
    """Each rpc-server may give 60% of what the big model needs: a small model fits on one,
    the big one needs both, so while the small one runs the big one must evict it or wait."""
    from sollol.testing.tiny_models import make_tiny_model

    big = make_tiny_model(tmp_path / "big.gguf", layers=8, dim=128, seed=3)
    share = model_needs(big) * 6 // 10
    assert model_needs(tiny_model) < share
    addresses = [a for a, _ in rpc_servers(2)]
    route = await sharding_route(addresses, rpc_max_coordinators=2, rpc_when_busy=when_busy,
                                 rpc_wait_timeout=1.0,
                                 rpc_backend_memory={a: share for a in addresses})
    small_lease = await route.acquire(RouteRequest(model=str(tiny_model)))
    small_lease.release(Outcome(ok=True))  # idle now, still holding one rpc-server
    small = route.supervisor.coordinators[str(tiny_model)]
    assert len(small.plan.addresses) == 1
    if when_busy == "wait":
        with pytest.raises(Overloaded, match="busy"):
            await route.acquire(RouteRequest(model=str(big)))
        assert small.state == "ready"  # never cut short
        return
    lease = await route.acquire(RouteRequest(model=str(big)))
    lease.release(Outcome(ok=True))
    assert small.state == "stopped"
    assert sorted(route.supervisor.coordinators[str(big)].plan.addresses) == sorted(addresses)


@pytest.mark.llamacpp
async def test_a_two_device_rpc_server_is_planned_per_device(
    processes, llama_binaries, sharding_route, tiny_model: Path,
) -> None:
    """`ggml-rpc-server -d CPU,CPU` exposes two devices: the split has a share for each, and
    llama-server loads the model over both."""
    from test_sharding_route import chat

    from sollol.core.processes import free_port, wait_port

    port = free_port()
    proc = processes.start("rpc-two-devices", [llama_binaries.rpc_server, "-d", "CPU,CPU",
                                               "-H", "127.0.0.1", "-p", str(port)])
    wait_port("127.0.0.1", port, process=proc)
    address = f"127.0.0.1:{port}"
    route = await sharding_route([address])
    lease = await route.acquire(RouteRequest(model=str(tiny_model)))
    try:
        coord = route.supervisor.coordinators[str(tiny_model)]
        assert len(coord.plan.tensor_split.split(",")) == 2
        assert await chat(lease.base_url, 4)
    finally:
        lease.release(Outcome(ok=True))
    (shard,) = route.snapshot()["backends"]
    assert len(shard["devices"]) == 2


class PinFirstShard:
    """A placement plugin: every model goes on the first rpc-server offered, alone."""

    calls: list[tuple[str, int, int]]

    def __init__(self) -> None:
        self.calls = []

    @hookimpl
    def sollol_place_shards(self, model: str, needed: int, offers, config) -> ShardPlacement:
        self.calls.append((model, needed, len(offers)))
        first = sorted(offers, key=lambda o: o.address)[0]
        return ShardPlacement((first.address,), reason="pinned to the first shard by a plugin")


@pytest.mark.llamacpp
async def test_a_plugin_can_choose_the_shards(
    rpc_servers, sharding_config, tiny_model: Path,
) -> None:
    from sollol_plugins.llamacpp_rpc.sharding_route import ShardingRoute

    from sollol.core.plugin_manager import get_plugin_manager
    from sollol.core.runtime import ClusterRuntime

    addresses = sorted(a for a, _ in rpc_servers(2))
    pm = get_plugin_manager(["llamacpp_rpc"])
    plugin = PinFirstShard()
    pm.register(plugin)
    config = sharding_config(addresses, rpc_placement="all")
    route = ShardingRoute(ClusterRuntime(config=config, pm=pm))
    await route.start()
    try:
        lease = await route.acquire(RouteRequest(model=str(tiny_model)))
        lease.release(Outcome(ok=True))
        coord = route.supervisor.coordinators[str(tiny_model)]
        assert coord.plan.addresses == [addresses[0]]
        assert coord.as_dict()["placement"]["reason"] == (
            "pinned to the first shard by a plugin; on one RPC device, so without pipeline "
            "parallelism (it needs two)")
        assert plugin.calls and plugin.calls[0][0] == str(tiny_model)
    finally:
        await route.stop()


# ------------------------------------------------------------------ load progress, preload


def test_bytes_delivered_counts_what_each_peer_acknowledged() -> None:
    """The kernel's per-connection counters, read through `ss`, for this very process."""
    import os
    import socket

    from sollol_plugins.llamacpp_rpc import sockets

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    peer, _ = server.accept()
    try:
        client.sendall(b"x" * 300_000)
        received = 0
        while received < 300_000:
            received += len(peer.recv(65536))
        delivered = sockets.bytes_delivered(os.getpid())
        assert delivered is not None and delivered[("127.0.0.1", port)] >= 300_000
    finally:
        for sock in (client, peer, server):
            sock.close()


def test_upload_progress_is_per_rpc_server_share() -> None:
    from sollol_plugins.llamacpp_rpc.coordinator import Coordinator

    offers = [ShardOffer(A, (3 * MiB,)), ShardOffer(B, (MiB,))]
    plan = make_plan("m", 4 * MiB, offers, place(4 * MiB, offers, "all"))
    resolved = type("Resolved", (), {"size": 8 * MiB, "path": Path("/m")})()
    coord = Coordinator.__new__(Coordinator)
    coord.plan, coord.resolved = plan, resolved
    coord.note_upload({("10.0.0.1", 50052): 5 * MiB}, lambda a: {(a.split(":")[0], 50052)})
    assert coord.upload == {A: {"bytes": 5 * MiB, "expected_bytes": 6 * MiB},
                            B: {"bytes": 0, "expected_bytes": 2 * MiB}}


@pytest.mark.llamacpp
async def test_a_coordinators_rpc_connections_carried_its_weights(
    rpc_servers, sharding_route, tiny_model: Path,
) -> None:
    """What `upload` shows while loading: by the time it is ready, each rpc-server has
    acknowledged at least its share of the weights on the coordinator's connection."""
    from sollol_plugins.llamacpp_rpc import sockets

    addresses = [a for a, _ in rpc_servers(2)]
    route = await sharding_route(addresses, rpc_placement="all")
    lease = await route.acquire(RouteRequest(model=str(tiny_model)))
    lease.release(Outcome(ok=True))
    coord = route.supervisor.coordinators[str(tiny_model)]
    coord.note_upload(sockets.bytes_delivered(coord.proc.pid), sockets.resolve)
    assert set(coord.upload) == set(addresses)
    for figures in coord.upload.values():
        assert figures["expected_bytes"] > 0
        assert figures["bytes"] >= figures["expected_bytes"] * 0.5  # weights and KV set-up


@pytest.mark.llamacpp
async def test_preloaded_models_are_warm_before_their_first_request(
    rpc_servers, sharding_route, tiny_model: Path,
) -> None:
    route = await sharding_route([a for a, _ in rpc_servers(1)],
                                 rpc_preload=[str(tiny_model), "no-such-model"])
    for _ in range(600):
        coord = route.supervisor.coordinators.get(str(tiny_model))
        if coord is not None and coord.state == "ready":
            break
        await asyncio.sleep(0.05)
    assert coord is not None and coord.state == "ready" and coord.served == 0
    assert any("rpc_preload 'no-such-model' failed" in w for w in route.supervisor.warnings)
    lease = await route.acquire(RouteRequest(model=str(tiny_model)))
    lease.release(Outcome(ok=True))
    assert route.supervisor.coordinators[str(tiny_model)] is coord  # the warm one served it


@pytest.mark.llamacpp
async def test_the_route_explains_what_a_request_would_do_now(
    rpc_servers, sharding_route, tmp_path: Path, tiny_model: Path,
) -> None:
    """`sollol route` shows it: start where, run already, evict whom, or wait how long."""
    from sollol.testing.tiny_models import make_tiny_model

    other = str(make_tiny_model(tmp_path / "other.gguf", seed=7))
    addresses = [a for a, _ in rpc_servers(1)]
    route = await sharding_route(addresses, rpc_max_coordinators=1, rpc_wait_timeout=7)
    first = await route.placement(RouteRequest(model=str(tiny_model)))
    assert first.able and "would start a coordinator: " in first.reason
    assert "fits on 1 of 1 free rpc-server(s)" in first.reason
    lease = await route.acquire(RouteRequest(model=str(tiny_model)))
    try:
        running = await route.placement(RouteRequest(model=str(tiny_model)))
        assert f"its coordinator is ready on {addresses[0]}" in running.reason
        busy = await route.placement(RouteRequest(model=other))
        assert "would wait up to 7s" in busy.reason and "then answer 429" in busy.reason
    finally:
        lease.release(Outcome(ok=True))
    idle = await route.placement(RouteRequest(model=other))
    assert f"would stop the least recently used idle coordinator ({str(tiny_model)!r})" \
        in idle.reason


@pytest.mark.llamacpp
async def test_layers_the_gateway_machine_can_hold_stay_there(
    rpc_servers, sharding_route, tiny_model: Path,
) -> None:
    """rpc_local_memory of half the model: the shard alone could not hold it, the gateway
    machine keeps whole layers (-ngl offloads the rest) and the two together serve it."""
    from test_sharding_route import chat

    needed = model_needs(tiny_model)
    (address, _proc), = rpc_servers(1)
    route = await sharding_route([address], rpc_backend_memory={address: needed * 6 // 10},
                                 rpc_local_memory=str(needed // 2))
    lease = await route.acquire(RouteRequest(model=str(tiny_model)))
    try:
        coord = route.supervisor.coordinators[str(tiny_model)]
        assert coord.plan.layer_count == 8 and 0 < coord.plan.local_layers < 8
        ngl = coord.argv(Path("llama-server"), 0, [])
        assert ngl[ngl.index("-ngl") + 1] == str(9 - coord.plan.local_layers)
        assert "stay in the gateway machine's memory" in coord.plan.reason
        assert await chat(lease.base_url, 4)
    finally:
        lease.release(Outcome(ok=True))
    report = route.snapshot()["coordinators"][0]["layers"]
    assert report["backends"][0]["layers"] == 8 - coord.plan.local_layers


def test_whole_layers_are_kept_local_as_memory_allows() -> None:
    from sollol_plugins.llamacpp_rpc.options import Options

    from sollol.models import ModelInfo

    def options(local: int) -> Options:
        return Options(mode="persistent", idle_timeout=1, max_coordinators=1,
                       startup_timeout=1, wait_timeout=1, ctx_size=0, extra_args=(),
                       state_dir=Path("/nonexistent"), local_memory=local)

    info = ModelInfo("m", file_size=900, layer_count=8)  # 100 bytes per layer (+ the output)
    assert options(0).split_local(900, info) == (900, 0)
    assert options(350).split_local(900, info) == (600, 3)
    assert options(10_000).split_local(900, info) == (100, 8)  # the output layer is sharded
    assert options(350).split_local(900, None) == (900, 0)  # layers unknown: nothing local


@pytest.mark.llamacpp
async def test_the_route_names_the_rpc_server_that_gets_the_layers(
    rpc_servers, sharding_route, tiny_model: Path,
) -> None:
    """Two CPU rpc-servers on one host each report the host's whole RAM: the route's reason,
    the coordinator's rpc-servers and the layer report all name the same one, every time."""
    addresses = [a for a, _ in rpc_servers(2)]
    route = await sharding_route(addresses)
    for _ in range(3):
        await route.shards.probe_free()  # fresh measurements, as a later `sollol route` sees
        said = await route.placement(RouteRequest(model=str(tiny_model)))
        assert f"fits on 1 of 2 free rpc-server(s): {addresses[0]} (" in said.reason
    lease = await route.acquire(RouteRequest(model=str(tiny_model)))
    lease.release(Outcome(ok=True))
    coord = route.supervisor.coordinators[str(tiny_model)]
    assert coord.plan.addresses == [addresses[0]]
    report = route.snapshot()["coordinators"][0]["layers"]
    assert [b["address"] for b in report["backends"] if b["layers"]] == [addresses[0]]


@pytest.mark.llamacpp
async def test_a_reload_applies_every_placement_key_the_route_says_it_applies(
    sharding_route, sharding_config,
) -> None:
    """reconfigure() names the keys in effect; memory caps and the reserve must be among the
    applied, not only named (issue 28: the reload report must be true)."""
    from sollol_plugins.llamacpp_rpc.rpc_probe import DeviceMemory

    address = "127.0.0.1:9"
    route = await sharding_route([address])
    applied = set(route.reconfigure(sharding_config(
        [address], rpc_backend_memory={address: "3 MiB"}, rpc_memory_reserve="1 MiB")))
    assert {"rpc_backend_memory", "rpc_memory_reserve"} <= applied
    shard = route.shards.shards[address]
    shard.devices = (DeviceMemory(index=0, free=64 * MiB, total=64 * MiB),)
    assert route.shards.offer(shard).free == (2 * MiB,)


@pytest.mark.llamacpp
async def test_the_route_finds_the_running_coordinator_under_any_spelling(
    rpc_servers, sharding_route, tiny_model: Path,
) -> None:
    """Issue 28's mismatch: the coordinator of "m" ran on w2, and `sollol route m:latest` looked
    it up by the name as written, missed it and said "would start ... on w1" (the free one)."""
    addresses = [a for a, _ in rpc_servers(2)]
    route = await sharding_route(addresses, gguf_dirs=[str(tiny_model.parent)])
    name = tiny_model.stem
    lease = await route.acquire(RouteRequest(model=name))
    try:
        (held,) = route.supervisor.coordinators[name].plan.addresses
        for spelling in (name, f"{name}:latest", name.upper()):
            said = await route.placement(RouteRequest(model=spelling))
            if said.holds is False:  # a spelling the GGUF store does not resolve
                continue
            assert f"its coordinator is ready on {held}" in said.reason, (spelling, said)
    finally:
        lease.release(Outcome(ok=True))
