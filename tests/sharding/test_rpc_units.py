"""Pure parts of the sharding plugin: log parsing, planning, settings, sockets, unit files."""

from __future__ import annotations

import asyncio
import socket

import pytest
from sollol_plugins.llamacpp_rpc import layers, sockets
from sollol_plugins.llamacpp_rpc.plan import (
    Candidate,
    DoesNotFit,
    make_plan,
    needed_bytes,
    place,
)
from sollol_plugins.llamacpp_rpc.rpc_probe import DeviceMemory
from sollol_plugins.llamacpp_rpc.rpc_unit import ServiceSpec, render
from sollol_plugins.llamacpp_rpc.shards import Shard, ShardRegistry

from sollol.core.runtime import load
from sollol.errors import ConfigError
from sollol.models import Backend

GIB = 1024**3
A, B = "127.0.0.1:51001", "127.0.0.1:51002"
# Lines from a real `llama-server --rpc A,B -ngl 99 -lv 4` log (the fit step's dry run first).
INFO_LOG = f"""\
I llama_prepare_model_devices: using device RPC0 ({A}) (unknown id) - 24105 MiB free
I llama_prepare_model_devices: using device RPC1 ({B}) (unknown id) - 24105 MiB free
I print_info: n_layer               = 8
I load_tensors: RPC0[{A}] model buffer size =     0.00 MiB
I load_tensors: RPC0[{B}] model buffer size =     0.00 MiB
I common_fit_params: successfully fit params to free device memory
I llama_prepare_model_devices: using device RPC0 ({A}) (unknown id) - 24105 MiB free
I llama_prepare_model_devices: using device RPC1 ({B}) (unknown id) - 24105 MiB free
I print_info: n_layer               = 8
I load_tensors: offloaded 9/9 layers to GPU
I load_tensors:   CPU_Mapped model buffer size =     0.15 MiB
I load_tensors: RPC0[{A}] model buffer size =     0.51 MiB
I load_tensors: RPC0[{B}] model buffer size =     0.45 MiB
I llama_kv_cache: RPC0[{A}] KV buffer size =     0.62 MiB
I llama_kv_cache: RPC0[{B}] KV buffer size =     0.38 MiB
"""
DEBUG_LINES = "".join(
    f"D load_tensors: layer {i:3d} assigned to device RPC{0 if i < 5 else 1}, is_swa = 0\n"
    for i in range(9))


@pytest.mark.parametrize("text, source", [(INFO_LOG, "kv-cache sizes"),
                                          (INFO_LOG.replace("I load_tensors: offloaded",
                                                            DEBUG_LINES + "I load_tensors: offl"
                                                            "oaded"), "log")])
def test_layer_report_per_backend(text: str, source: str) -> None:
    report = layers.parse(text.splitlines(), [A, B]).as_dict()
    assert report["layers_from"] == source
    assert report["block_count"] == 8 and report["offloaded"] == "9/9"
    first, second = report["backends"]
    assert (first["address"], first["layers"], first["layer_range"]) == (A, 5, "0-4")
    assert (second["address"], second["layers"], second["layer_range"]) == (B, 3, "5-7")
    assert (first["weights_mib"], first["kv_mib"]) == (0.51, 0.62)  # the real load, not the dry run
    assert report["coordinator"]["weights_mib"] == 0.15
    assert report["output_layer_on"] == B


def test_layer_report_lists_a_backend_that_got_nothing() -> None:
    report = layers.parse(INFO_LOG.splitlines(), [A, B, "127.0.0.1:9"]).as_dict()
    assert report["backends"][2] == {"address": "127.0.0.1:9", "layers": 0, "layer_range": "",
                                     "weights_mib": 0.0, "kv_mib": 0.0}


def test_plan_splits_by_free_memory_and_refuses_with_numbers() -> None:
    offers = [Candidate(A, (3 * GIB,)), Candidate(B, (GIB, 2 * GIB))]
    plan = make_plan("m", 3 * GIB, offers, place(3 * GIB, offers, "all"))
    assert plan.addresses == [A, B]
    assert plan.tensor_split == "0.5000,0.1667,0.3333"
    small = [Candidate(A, (3 * GIB,)), Candidate(B, (2 * GIB,))]
    with pytest.raises(DoesNotFit) as info:
        make_plan("big", 10 * GIB, small, place(10 * GIB, small))
    assert "needs ~10.00 GiB" in str(info.value) and "5.00 GiB free" in str(info.value)
    assert info.value.numbers["backends"] == {A: 3 * GIB, B: 2 * GIB}
    assert needed_bytes(100, 10, 4) == 140 and needed_bytes(100, None, 4) == 100


def test_incompatible_backend_names_both_versions() -> None:
    registry = ShardRegistry(timeout=1, client_version=(7, 0, 0))
    assert registry._incompatibility((7, 0, 0)) is None
    text = registry._incompatibility((6, 1, 0))
    assert "6.1.0" in text and "7.0.0" in text
    shard = Shard(Backend(id="rpc:x", kind="rpc", address=A), healthy=True,
                  devices=(DeviceMemory(0, GIB, GIB),), incompatible=text)
    state = shard.state()
    assert not state.healthy and "6.1.0" in state.detail and state.memory_free == GIB


def test_settings_are_validated() -> None:
    config, _pm = load(overrides={"rpc_coordinator_mode": "ephemeral",
                                  "rpc_discovery_ports": "50052,50053"})
    assert config["rpc_coordinator_mode"] == "ephemeral"
    assert config["rpc_discovery_ports"] == [50052, 50053]
    with pytest.raises(ConfigError, match="rpc_coordinator_mode"):
        load(overrides={"rpc_coordinator_mode": "sometimes"})
    with pytest.raises(ConfigError, match="at most 1024"):
        load(overrides={"rpc_discovery_cidr": "10.0.0.0/8"})
    with pytest.raises(ConfigError, match="at least 1"):
        load(overrides={"rpc_max_coordinators": 0})


def test_discovery_scans_nothing_unless_sharding_is_on_or_backends_are_named(pm) -> None:
    config, _ = load(overrides={"model_sharding_enabled": False})
    impl = next(i for i in pm.hook.sollol_discover_backends.get_hookimpls()
                if i.plugin_name == "llamacpp_rpc")
    assert impl.function(config=config) is None
    config, _ = load(overrides={"rpc_backends": [A], "rpc_discover_loopback": False})
    (backend,) = impl.function(config=config)
    assert (backend.id, backend.kind, backend.address) == (f"rpc:{A}", "rpc", A)


async def test_established_peers_sees_a_connection_and_its_loss() -> None:
    import os

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    peer, _ = server.accept()
    try:
        assert ("127.0.0.1", port) in sockets.established_peers(os.getpid())
        assert sockets.resolve(f"127.0.0.1:{port}") == {("127.0.0.1", port)}
        peer.close()  # the "rpc-server" goes away: our side leaves ESTABLISHED
        await asyncio.sleep(0.1)
        assert ("127.0.0.1", port) not in sockets.established_peers(os.getpid())
    finally:
        client.close()
        server.close()


def test_service_unit_is_hardened(tmp_path) -> None:
    text = render(ServiceSpec(tmp_path / "python", tmp_path, port=50099, threads=2, cache=True))
    assert (f"ExecStart={tmp_path}/python -m sollol rpc serve --host 127.0.0.1 --port 50099 "
            "--threads 2 --cache %C/sollol-rpc") in text
    for line in ("DynamicUser=yes", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "CapabilityBoundingSet=", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
                 "Environment=LLAMA_CACHE=%C/sollol-rpc", "WantedBy=multi-user.target"):
        assert line in text.splitlines()
    user = render(ServiceSpec(tmp_path / "python", tmp_path, user_unit=True))
    assert "WantedBy=default.target" in user and "DynamicUser" not in user


async def test_list_models_names_what_the_resolution_hooks_know(tiny_model) -> None:
    from sollol_plugins.llamacpp_rpc.sharding_route import ShardingRoute

    from sollol.core.plugin_manager import get_plugin_manager
    from sollol.core.runtime import ClusterRuntime
    from sollol.hookspecs import hookimpl

    class Names:
        @hookimpl
        def sollol_gguf_names(self, config):
            return [str(tiny_model), "/no/such/file.gguf"]

    config, _ = load(overrides={"model_sharding_enabled": True, "plugins": ["llamacpp_rpc"]})
    pm = get_plugin_manager(["llamacpp_rpc"])
    pm.register(Names(), name="test-names")
    try:
        route = ShardingRoute(ClusterRuntime(config=config, pm=pm))
        (entry,) = await route.list_models()
    finally:
        pm.unregister(name="test-names")
    assert entry["name"] == str(tiny_model)
    assert entry["size"] == tiny_model.stat().st_size


async def test_a_stored_model_is_listed_under_its_full_name_with_details(
    ollama_store, tiny_model,
) -> None:
    """Issue 28, finding 9: `bigmodel` is listed as `bigmodel:latest` loaded or not, with the
    family, size and quantization its GGUF header gives."""
    from sollol_plugins.llamacpp_rpc.sharding_route import ShardingRoute

    from sollol.core.plugin_manager import get_plugin_manager
    from sollol.core.runtime import ClusterRuntime

    ollama_store.add_model("bigmodel", tiny_model)
    config, _ = load(overrides={"model_sharding_enabled": True,
                                "plugins": ["llamacpp_rpc", "ollama_pool"]})
    route = ShardingRoute(ClusterRuntime(config=config,
                                         pm=get_plugin_manager(["llamacpp_rpc", "ollama_pool"])))
    (entry,) = [m for m in await route.list_models() if "bigmodel" in m["name"]]
    assert entry["name"] == entry["model"] == "bigmodel:latest"
    details = entry["details"]
    assert details["format"] == "gguf" and details["family"] == "llama"
    assert details["families"] == ["llama"] and details["parameter_size"]
    assert details["quantization_level"] == "F16"
