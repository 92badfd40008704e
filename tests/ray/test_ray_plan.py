"""The Ray plugin without a Ray cluster: which actors it wants, its keys, and the error a
gateway gives when Ray is not installed."""

from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner
from sollol_plugins.ray_cluster.cli import render
from sollol_plugins.ray_cluster.plan import RayNodeInfo, alive_nodes, wanted

from sollol.cli import build_cli
from sollol.core.plugin_manager import get_plugin_manager
from sollol.core.runtime import ClusterRuntime, load
from sollol.errors import ConfigError
from sollol.gateway import GatewayThread

NODES = [RayNodeInfo("a" * 56, "10.0.0.1", gpus=2), RayNodeInfo("b" * 56, "10.0.0.2")]


def test_one_rpc_server_per_node_each_pinned_to_its_node() -> None:
    slots = wanted(NODES, "node", {})
    assert [(s.node_id, s.gpu) for s in slots] == [("a" * 56, False), ("b" * 56, False)]
    assert [s.backend_id for s in slots] == ["rpc:ray-" + "a" * 12, "rpc:ray-" + "b" * 12]
    assert slots[0].actor_name("gw1") == "sollol-gw1-rpc-" + "a" * 12


def test_per_gpu_gives_a_node_one_per_gpu_and_a_node_without_gpus_none() -> None:
    slots = wanted(NODES, "gpu", {})
    assert [s.backend_id for s in slots] == [f"rpc:ray-{'a' * 12}-g0", f"rpc:ray-{'a' * 12}-g1"]
    assert all(s.gpu and s.node_id == "a" * 56 for s in slots)
    assert len({s.actor_name("g") for s in slots}) == 2


def test_pool_models_are_one_actor_each_and_none_means_no_rpc_servers() -> None:
    slots = wanted(NODES, "none", {"tiny": "/shared/tiny.gguf", "big": "/shared/big.gguf"})
    assert [(s.kind, s.model, s.path, s.node_id) for s in slots] == [
        ("pool", "big", "/shared/big.gguf", None), ("pool", "tiny", "/shared/tiny.gguf", None)]
    assert [s.backend_id for s in slots] == ["ray-big", "ray-tiny"]


def test_only_alive_nodes_count() -> None:
    entries = [{"NodeID": "x" * 56, "Alive": True, "NodeManagerAddress": "10.0.0.9",
                "Resources": {"CPU": 4.0, "GPU": 1.0}},
               {"NodeID": "y" * 56, "Alive": False, "NodeManagerAddress": "10.0.0.8"}]
    assert alive_nodes(entries) == [RayNodeInfo("x" * 56, "10.0.0.9", gpus=1)]


def test_keys_are_checked() -> None:
    with pytest.raises(ConfigError, match="ray_rpc_per"):
        load(overrides={"plugins": ["ray"], "ray_rpc_per": "rack"})
    with pytest.raises(ConfigError, match="ray_watch_interval"):
        load(overrides={"plugins": ["ray"], "ray_watch_interval": 0})
    with pytest.raises(ConfigError, match="ray_pool_models"):
        load(overrides={"plugins": ["ray"], "ray_pool_models": {"tiny": 3}})
    config, _pm = load(overrides={"plugins": ["ray"]})
    assert config["ray_address"] == "" and config["ray_rpc_per"] == "node"


def test_without_ray_installed_the_gateway_refuses_to_start_and_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    config, _pm = load(overrides={"plugins": ["ray"], "ray_address": "127.0.0.1:6379",
                                  "task_distribution_enabled": False})
    gateway = GatewayThread(ClusterRuntime(config=config, pm=get_plugin_manager(["ray"])))
    with pytest.raises(RuntimeError, match="failed to start"):
        gateway.start()
    gateway.stop()
    assert "the Ray plugin needs Ray on this machine: pip install 'sollol[ray]'" in caplog.text


def test_with_no_address_the_plugin_is_off_and_status_says_so() -> None:
    config, _pm = load(overrides={"plugins": ["ray"], "task_distribution_enabled": False})
    with GatewayThread(ClusterRuntime(config=config, pm=get_plugin_manager(["ray"]))) as gw:
        result = CliRunner().invoke(build_cli(), ["ray", "status", "--gateway", gw.url])
    assert result.exit_code == 0, result.output
    assert "Ray: off (ray_address is empty)" in result.output


def test_status_lines() -> None:
    text = render({"enabled": True, "address": "h:6379", "connected": True, "rpc_per": "node",
                   "nodes": [{"alive": True}, {"alive": False}],
                   "members": [{"id": "rpc:ray-abc", "state": "running",
                                "address": "10.0.0.1:5000", "node_id": "abc" * 10}],
                   "failures": [{"id": "rpc/def", "error": "BinaryNotFound: no llama.cpp",
                                 "retry_in": 4.0}]})
    assert "Ray h:6379: connected; 1 alive node(s); rpc-servers per node" in text
    assert "rpc:ray-abc" in text and "10.0.0.1:5000" in text and "running" in text
    assert "retry in 4.0 s: BinaryNotFound: no llama.cpp" in text
