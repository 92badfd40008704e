"""LocalCluster: its models, its servers, the config it hands out, and cleanup on failure."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from sollol.core.gguf_info import read_model_info
from sollol.core.processes import ignores_sigpipe
from sollol.core.runtime import ClusterRuntime
from sollol.errors import BinaryNotFound
from sollol.llamacpp import Binaries
from sollol.local import THRESHOLD, LocalCluster, ensure_models
from sollol.local import servers as local_module
from sollol.models import RouteRequest
from sollol.testing.ollama_store import OllamaStoreBuilder


def test_models_are_generated_once_and_reused(tmp_path: Path) -> None:
    made = ensure_models(tmp_path)
    assert made.created
    again = ensure_models(tmp_path)
    assert not again.created
    assert (again.small, again.large) == (made.small, made.large)
    assert made.small.path.parent == made.store / "blobs"
    # the same specs give the same bytes, so the same digests
    other = ensure_models(tmp_path / "elsewhere")
    assert other.small.path.name == made.small.path.name
    assert other.large.path.name == made.large.path.name


def test_a_damaged_store_is_rebuilt(tmp_path: Path) -> None:
    made = ensure_models(tmp_path)
    made.large.path.unlink()
    rebuilt = ensure_models(tmp_path)
    assert rebuilt.created and rebuilt.large.path.is_file()


def test_the_threshold_lies_between_the_models_by_metadata(tmp_path: Path) -> None:
    made = ensure_models(tmp_path)
    small = read_model_info(made.small.path, made.small.name)
    large = read_model_info(made.large.path, made.large.name)
    assert small.parameter_count is not None and large.parameter_count is not None
    assert small.parameter_count < THRESHOLD <= large.parameter_count
    assert large.layer_count == made.large.layers


def test_cluster_needs_nodes_and_a_start() -> None:
    with pytest.raises(ValueError, match="at least one"):
        LocalCluster(pool_nodes=0)
    with pytest.raises(RuntimeError, match="not running"):
        LocalCluster().overrides()


def test_an_explicit_binary_folder_is_never_replaced_by_a_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[object] = []
    monkeypatch.setattr(local_module, "install", lambda progress=None: built.append(progress))
    monkeypatch.setenv("SOLLOL_LLAMA_CPP_DIR", str(tmp_path))
    with pytest.raises(BinaryNotFound, match="SOLLOL_LLAMA_CPP_DIR"):
        local_module.ensure_binaries()
    assert built == []


def test_missing_binaries_are_built_with_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_found(config: Any) -> Binaries:
        raise BinaryNotFound("nothing anywhere")

    calls: list[object] = []
    sentinel = Binaries(Path("/x/llama-server"), Path("/x/ggml-rpc-server"), "cache")
    monkeypatch.setattr(local_module, "find_binaries", not_found)
    monkeypatch.setattr(local_module, "install",
                        lambda progress=None: calls.append(progress) or sentinel)
    progress = print
    assert local_module.ensure_binaries(progress) is sentinel
    assert calls == [progress]


@pytest.mark.llamacpp
def test_servers_answer_and_overrides_point_at_them(local_cluster: LocalCluster) -> None:
    import httpx

    values = local_cluster.overrides()
    assert values["ollama_nodes"] == [f"openai://{s.address}" for s in local_cluster.pool]
    assert values["rpc_backends"] == [s.address for s in local_cluster.rpc]
    assert values["model_sharding_enabled"] and values["task_distribution_enabled"]
    assert values["policy_settings"]["size-threshold"]["min_parameters"] == THRESHOLD
    models = httpx.get(local_cluster.pool[0].url + "/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["sollol-demo-small"]
    assert all(s.process.alive() for s in local_cluster.servers)
    # a coordinator killed mid-reply must not take an rpc-server with it (SIGPIPE)
    assert all(ignores_sigpipe(s.process.pid) for s in local_cluster.rpc)


@pytest.mark.llamacpp
async def test_routes_follow_gguf_size_not_names(
    local_cluster: LocalCluster, tmp_path: Path,
) -> None:
    """Where both routes hold a model, its GGUF size decides, never its name: the pool nodes
    serve "sollol-demo-small", whose GGUF on the gateway machine is here the big one. A model
    only the store holds ("huge-70b", small weights) can only be sharded."""
    assert local_cluster.models is not None
    store = OllamaStoreBuilder(tmp_path / "store")
    store.add_model("sollol-demo-small", local_cluster.models.large.path)
    store.add_model("huge-70b", local_cluster.models.small.path)
    overrides = {**local_cluster.overrides(), "ollama_models_dir": str(store.root)}
    async with ClusterRuntime.from_config(overrides=overrides) as cluster:
        big = await cluster.decide(RouteRequest(model="sollol-demo-small"))
        only = await cluster.decide(RouteRequest(model="huge-70b"))
    assert big.route == "sharding" and big.policy == "size-threshold"
    assert big.numbers["size"] >= THRESHOLD
    assert big.placement["pool"]["verdict"] == "can serve"
    assert only.route == "sharding" and "only the sharding route" in only.reason
    assert only.placement["pool"]["verdict"] == "cannot serve"


@pytest.mark.llamacpp
def test_a_failed_start_stops_what_it_started(tmp_path: Path, llama_binaries: Binaries) -> None:
    broken = tmp_path / "bin" / "llama-server"
    broken.parent.mkdir()
    broken.write_text("#!/bin/sh\necho 'cannot load the model' >&2\nexit 3\n")
    broken.chmod(broken.stat().st_mode | stat.S_IXUSR)
    local = LocalCluster(pool_nodes=1, shards=2, root=tmp_path / "local",
                         binaries=Binaries(broken, llama_binaries.rpc_server, "test"))
    with pytest.raises(RuntimeError, match="cannot load the model"):
        local.start()
    assert local.servers == []
    assert local.run_dir is not None and local.run_dir.is_dir()  # logs kept for the user
    for log in local.run_dir.glob("rpc-server-*.log"):
        port = int(log.stem.rsplit("-", 1)[1])
        assert not _listening(port), f"rpc-server on {port} outlived the failed start"


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.llamacpp
def test_a_clean_stop_removes_the_run_logs(tmp_path: Path, llama_binaries: Binaries) -> None:
    with LocalCluster(pool_nodes=1, shards=1, root=tmp_path, binaries=llama_binaries) as local:
        run_dir = local.run_dir
        pids = [s.process.pid for s in local.servers]
        assert run_dir is not None and run_dir.is_dir()
    assert not run_dir.exists()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_servers_are_awaited_directly_despite_a_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The local cluster waits for its loopback servers; an http_proxy must not intercept."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from sollol.core.processes import free_port, wait_http

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{free_port()}")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with ThreadingHTTPServer(("127.0.0.1", 0), Health) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            wait_http(f"http://127.0.0.1:{server.server_port}/health", timeout=10)
        finally:
            server.shutdown()
            thread.join()
