"""Seeding an rpc-server's tensor cache on the shard machine: the first load sends hashes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sollol_plugins.llamacpp_rpc.seed import HASH_THRESHOLD, fnv1a_64, rpc_cache_dir, seed

from sollol.models import RouteRequest
from sollol.routes import Outcome


def fnv1a_64_reference(data: bytes) -> int:
    value = 0xCBF29CE484222325
    for byte in data:
        value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return value


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_the_hash_is_llama_cpps_fnv1a_64(data: bytes) -> None:
    assert fnv1a_64(data) == fnv1a_64_reference(data)


def test_the_cache_folder_follows_llama_cpp() -> None:
    assert rpc_cache_dir({"LLAMA_CACHE": "/x"}) == Path("/x/rpc")
    assert rpc_cache_dir({"XDG_CACHE_HOME": "/c"}) == Path("/c/llama.cpp/rpc")
    assert rpc_cache_dir({}) == Path.home() / ".cache" / "llama.cpp" / "rpc"


@pytest.fixture(scope="module")
def big_tensor_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One layer of 2048 dims with 32 MiB feed-forward tensors (the cache takes > 10 MiB)."""
    from sollol.testing.tiny_models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("seed") / "big-tensors.gguf", layers=1,
                           dim=2048, ff=8192, seed=5)


def test_seeding_writes_each_big_tensor_under_its_hash_once(
    big_tensor_model: Path, tmp_path: Path,
) -> None:
    from gguf import GGUFReader

    cache = tmp_path / "rpc"
    report = seed(big_tensor_model, cache)
    big = [t for t in GGUFReader(big_tensor_model).tensors if int(t.n_bytes) > HASH_THRESHOLD]
    assert report.tensors == report.written == len(big) == 3  # gate, up, down
    names = sorted(p.name for p in cache.iterdir())
    assert names == sorted(f"{fnv1a_64(t.data.tobytes()):016x}" for t in big)
    assert all(len(n) == 16 for n in names)
    again = seed(big_tensor_model, cache)
    assert (again.written, again.present, again.bytes_written) == (0, 3, 0)


@pytest.mark.llamacpp
async def test_a_seeded_rpc_server_receives_hashes_not_weights(
    processes, llama_binaries, sharding_route, big_tensor_model: Path, tmp_path: Path,
) -> None:
    """The same model loaded onto a seeded and an empty cache: the coordinator's connection
    carries the big tensors only to the empty one, and both answer the same."""
    from sollol_plugins.llamacpp_rpc import sockets
    from test_sharding_route import chat

    from sollol.core.processes import free_port, wait_port

    delivered, replies = {}, {}
    for label in ("empty", "seeded"):
        cache_root = tmp_path / f"llama-cache-{label}"
        if label == "seeded":
            seed(big_tensor_model, rpc_cache_dir({"LLAMA_CACHE": str(cache_root)}))
        port = free_port()
        proc = processes.start(f"rpc-{label}", [llama_binaries.rpc_server, "-H", "127.0.0.1",
                                                "-p", str(port), "-c"],
                               env={**os.environ, "LLAMA_CACHE": str(cache_root)})
        wait_port("127.0.0.1", port, process=proc)
        route = await sharding_route([f"127.0.0.1:{port}"],
                                     rpc_state_dir=str(tmp_path / f"state-{label}"))
        lease = await route.acquire(RouteRequest(model=str(big_tensor_model)))
        try:
            coord = route.supervisor.coordinators[str(big_tensor_model)]
            peers = sockets.bytes_delivered(coord.proc.pid)
            delivered[label] = sum(n for (_ip, p), n in peers.items() if p == port)
            replies[label] = await chat(lease.base_url, 4)
        finally:
            lease.release(Outcome(ok=True))
        await route.stop()
    big = 3 * 2048 * 8192 * 2
    assert delivered["empty"] > big
    assert delivered["seeded"] < delivered["empty"] - big * 0.9
    assert replies["seeded"] == replies["empty"]


@pytest.mark.llamacpp
def test_the_seed_command_resolves_names_from_this_machines_store(
    ollama_store, big_tensor_model: Path, tmp_path: Path,
) -> None:
    ollama_store.add_model("bigtensors", big_tensor_model)
    done = subprocess.run([sys.executable, "-m", "sollol", "rpc", "seed", "bigtensors",
                           "--cache", str(tmp_path / "cache"), "--json"],
                          capture_output=True, text=True, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    (report,) = json.loads(done.stdout)
    assert report["written"] == 3 and report["cache"] == str(tmp_path / "cache" / "rpc")
    missing = subprocess.run([sys.executable, "-m", "sollol", "rpc", "seed", "no-such-model",
                              "--cache", str(tmp_path / "cache")], capture_output=True,
                             text=True, env=dict(os.environ))
    assert missing.returncode == 1 and "not found on this machine" in missing.stderr


@pytest.mark.llamacpp
def test_the_seed_command_takes_any_gguf_path_the_operator_names(
    big_tensor_model: Path, tmp_path: Path,
) -> None:
    """Issue 28, finding 12: `gguf_dirs` limits what a gateway's remote clients may name; the
    operator's own argument on the shard machine may be any GGUF file it can read."""
    elsewhere = tmp_path / "gguf-dirs-hold-nothing-else"
    elsewhere.mkdir()
    env = {**os.environ, "SOLLOL_GGUF_DIRS": str(elsewhere)}
    done = subprocess.run([sys.executable, "-m", "sollol", "rpc", "seed", str(big_tensor_model),
                           "--cache", str(tmp_path / "cache"), "--json"],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    (report,) = json.loads(done.stdout)
    assert report["written"] == 3
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("not a model")
    refused = subprocess.run([sys.executable, "-m", "sollol", "rpc", "seed", str(not_gguf),
                              "--cache", str(tmp_path / "cache")],
                             capture_output=True, text=True, env=env)
    assert refused.returncode == 1 and "not a GGUF file" in refused.stderr
