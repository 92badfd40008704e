"""A plugin written outside this repository works end to end, as a third party would build it.

Each plugin is pip-installed into a folder of its own (never into the test environment, whose
plugin list other tests check) and used through PYTHONPATH: its tests run in a separate pytest,
and a request is routed through it by `sollol run --plugin ...`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from sollol.core.processes import free_port, wait_http

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def pip_install(package: Path, target: Path) -> None:
    """Install like a user would, into `target` (no build isolation: no index needed)."""
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                           "--no-build-isolation", "--target", str(target), str(package)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def env_with(site: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    env.update(settings)
    return env


def run_plugin_tests(package: Path, site: Path) -> str:
    """The plugin's own test suite, run the way its author runs it (in its own folder)."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                          cwd=package, env=env_with(site), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and " failed" not in done.stdout, done.stdout[-2000:]
    return done.stdout


@pytest.fixture
def sollol_run(processes, tmp_path: Path) -> Callable[..., str]:
    """Start `sollol run --plugin ... --port P` with env settings; returns the gateway's URL."""

    def start(site: Path, plugins: list[str], **settings: str) -> str:
        port = free_port()
        args = [sys.executable, "-m", "sollol", "run", "--port", str(port)]
        for name in plugins:
            args += ["--plugin", name]
        proc = processes.start(f"sollol-run-{port}", args, env=env_with(site, **settings),
                               cwd=tmp_path)
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/api/version", process=proc, timeout=120)
        return url

    return start


def scaffold(tmp_path: Path, name: str, kind: str) -> Path:
    done = subprocess.run([sys.executable, "-m", "sollol", "plugins", "new", name, "--kind",
                           kind, "--dir", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return tmp_path / f"sollol-{name}"


@pytest.mark.parametrize("kind", ["backend", "policy", "command"])
def test_a_scaffolded_plugin_installs_and_passes_its_tests(tmp_path: Path, kind: str) -> None:
    package = scaffold(tmp_path, f"my-{kind}", kind)
    site = tmp_path / "site"
    pip_install(package, site)
    listed = subprocess.run([sys.executable, "-m", "sollol", "plugins", "--json"],
                            env=env_with(site), capture_output=True, text=True, check=True)
    assert f'"name": "my-{kind}"' in listed.stdout
    run_plugin_tests(package, site)


def test_a_request_is_routed_through_a_scaffolded_backend_plugin(
    tmp_path: Path, sollol_run, llama_server, tiny_model,
) -> None:
    site = tmp_path / "site"
    pip_install(scaffold(tmp_path, "edge-box", "backend"), site)
    url, _proc = llama_server(tiny_model, "--alias", "tiny")
    address = url.removeprefix("http://")
    gateway = sollol_run(site, ["ollama_pool", "edge-box"], SOLLOL_EDGE_BOX_NODES=address,
                         SOLLOL_OLLAMA_NODES="127.0.0.1:9")
    reply = httpx.post(gateway + "/v1/chat/completions", timeout=60, json={
        "model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-sollol-backend"] == address


def test_scaffolding_refuses_bad_names_and_busy_folders(tmp_path: Path) -> None:
    for bad in ("My Plugin", "../escape", "9lives", ""):
        done = subprocess.run([sys.executable, "-m", "sollol", "plugins", "new", bad, "--dir",
                               str(tmp_path)], capture_output=True, text=True)
        assert done.returncode == 1 and done.stderr.startswith("Error: plugin name"), bad
    scaffold(tmp_path, "twice", "policy")
    again = subprocess.run([sys.executable, "-m", "sollol", "plugins", "new", "twice", "--dir",
                            str(tmp_path), "--kind", "policy"], capture_output=True, text=True)
    assert again.returncode == 1 and "is not empty" in again.stderr
    assert not (tmp_path / "..escape").exists()


def test_the_vllm_example_passes_its_tests_and_serves_through_sollol_run(
    tmp_path: Path, sollol_run, llama_server, tiny_model,
) -> None:
    site = tmp_path / "site"
    pip_install(EXAMPLES / "sollol-vllm", site)
    run_plugin_tests(EXAMPLES / "sollol-vllm", site)
    url, _proc = llama_server(tiny_model, "--alias", "tiny")
    address = url.removeprefix("http://")
    gateway = sollol_run(site, ["ollama_pool", "vllm"], SOLLOL_VLLM_NODES=address,
                         SOLLOL_OLLAMA_NODES="127.0.0.1:9")
    reply = httpx.post(gateway + "/api/chat", timeout=60, json={
        "model": "tiny", "stream": False, "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-sollol-backend"] == address
    nodes = httpx.get(gateway + "/sollol/nodes", timeout=30).json()["nodes"]
    assert {n["id"]: n["kind"] for n in nodes}[address] == "vllm"


def test_the_latency_example_passes_its_tests_and_routes_through_sollol_run(
    tmp_path: Path, sollol_run, emulator, ollama_store, rpc_servers, llama_binaries,
) -> None:
    """Both routes on (an emulated pool node and a real sharded model): the installed policy
    decides, measuring each route once before it trusts either."""
    site = tmp_path / "site"
    pip_install(EXAMPLES / "sollol-latency", site)
    run_plugin_tests(EXAMPLES / "sollol-latency", site)
    node = emulator(models=["tiny"])
    [(shard, _proc)] = rpc_servers(1)
    gateway = sollol_run(
        site, ["ollama_pool", "llamacpp_rpc", "latency"],
        SOLLOL_OLLAMA_NODES=node.url, SOLLOL_MODEL_SHARDING_ENABLED="true",
        SOLLOL_TASK_DISTRIBUTION_ENABLED="true", SOLLOL_RPC_BACKENDS=shard,
        SOLLOL_ROUTING_POLICY="latency",
        SOLLOL_LLAMA_CPP_DIR=str(llama_binaries.llama_server.parent),
        SOLLOL_RPC_STATE_DIR=str(tmp_path / "sharding"), OLLAMA_MODELS=str(ollama_store.root))
    routes = []
    for _ in range(2):
        reply = httpx.post(gateway + "/api/generate", timeout=120, json={
            "model": "tiny", "prompt": "hi", "stream": False, "options": {"num_predict": 4}})
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-sollol-policy"] == "latency"
        routes.append(reply.headers["x-sollol-route"])
    assert sorted(routes) == ["pool", "sharding"]


SCAFFOLDED_BEFORE = Path(__file__).with_name("scaffolded_2_4")


@pytest.mark.parametrize("kind", ["backend", "policy", "command"])
def test_a_plugin_scaffolded_by_an_earlier_sollol_still_passes(tmp_path: Path, kind: str) -> None:
    """`sollol plugins new` output kept byte for byte from plugin API 2.4 (before the layered
    tree): it installs, loads and passes its own tests against this SOLLOL, unchanged."""
    package = tmp_path / f"sollol-v2-{kind}"
    shutil.copytree(SCAFFOLDED_BEFORE / f"sollol-v2-{kind}", package)
    site = tmp_path / "site"
    pip_install(package, site)
    listed = subprocess.run([sys.executable, "-m", "sollol", "plugins", "--json"],
                            env=env_with(site), capture_output=True, text=True, check=True)
    assert f'"name": "v2-{kind}"' in listed.stdout
    run_plugin_tests(package, site)
