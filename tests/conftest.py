"""The one fixture module that starts real processes for tests, and always stops them.

Sections: core, llama.cpp (binaries, tiny models, store), emulator nodes, gateway, sharding.
Every fixture that starts a process does so through a `ProcessGroup` that is stopped at teardown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from sollol.plugins import SollolPluginManager, get_plugin_manager
from sollol.processes import ProcessGroup

if TYPE_CHECKING:
    from sollol.llamacpp import Binaries
    from sollol.processes import ManagedProcess
    from sollol.testing.emulator import EmulatorNode
    from sollol.testing.ollama_store import OllamaStoreBuilder

# ---------------------------------------------------------------------------------------- core


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[ProcessGroup]:
    """A process group for one test; everything in it is stopped when the test ends."""
    group = ProcessGroup(log_dir=tmp_path / "logs")
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture(scope="session")
def session_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessGroup]:
    """A process group shared by the whole session (slow-to-start servers)."""
    group = ProcessGroup(log_dir=tmp_path_factory.mktemp("session-logs"))
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture
def pm() -> SollolPluginManager:
    """A fresh plugin manager with every installed plugin."""
    return get_plugin_manager()


@pytest.fixture(autouse=True)
def isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point SOLLOL at an empty config file and clear SOLLOL_* / OLLAMA_HOSTS from the env."""
    import os

    for name in list(os.environ):
        if name.startswith("SOLLOL_") or name in ("OLLAMA_HOSTS", "OLLAMA_MODELS"):
            monkeypatch.delenv(name)
    path = tmp_path / "config" / "config.toml"
    monkeypatch.setenv("SOLLOL_CONFIG", str(path))
    return path


# ----------------------------------------------------------------------------------- llama.cpp


@pytest.fixture(scope="session")
def llama_binaries() -> Binaries:
    """The real llama-server and ggml-rpc-server; FAILS (never skips) when they are missing.

    Honours SOLLOL_LLAMA_CPP_DIR, PATH and the build cache, not the user's config file.
    """
    import os

    from sollol.config import Config
    from sollol.errors import BinaryNotFound
    from sollol.llamacpp import INSTALL_COMMAND, find_binaries

    try:
        return find_binaries(Config(values={"llama_cpp_dir": None}), env=os.environ)
    except BinaryNotFound as exc:
        pytest.fail(f"llama.cpp binaries are missing: run `{INSTALL_COMMAND}` first ({exc})")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated ~1 MB llama GGUF (TinyModelSpec() defaults: 8 layers, 64 dims, f16, seed 0)."""
    from sollol.testing.tiny_models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny.gguf")


@pytest.fixture
def ollama_store(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch,
) -> OllamaStoreBuilder:
    """An Ollama-layout store in tmp, set as OLLAMA_MODELS, holding the tiny model as `tiny`,
    `someone/tiny:v1` and `hf.co/org/tiny-GGUF:F16`. Add more with the returned builder."""
    from sollol.testing.ollama_store import OllamaStoreBuilder

    store = OllamaStoreBuilder(tmp_path / "ollama-models")
    for name in ("tiny", "someone/tiny:v1", "hf.co/org/tiny-GGUF:F16"):
        store.add_model(name, tiny_model, params={"temperature": 0})
    monkeypatch.setenv("OLLAMA_MODELS", str(store.root))
    return store


@pytest.fixture
def llama_server(
    processes: ProcessGroup, llama_binaries: Binaries,
) -> Callable[..., tuple[str, ManagedProcess]]:
    """Start a real llama-server on a model: `url, proc = llama_server(path, "-c", "512")`.

    Waits for /health to answer 200; the server stops with the test's process group.
    """
    from sollol.processes import free_port, wait_http

    def start(model: Path, *extra: str, threads: int = 1) -> tuple[str, ManagedProcess]:
        port = free_port()
        args = [llama_binaries.llama_server, "-m", model, "--host", "127.0.0.1",
                "--port", str(port), "-t", str(threads), "-c", "512", *extra]
        proc = processes.start(f"llama-server-{port}", args)
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/health", process=proc, timeout=120)
        return url, proc

    return start



# ------------------------------------------------------------------------------ emulator nodes


@pytest.fixture
def emulator() -> Iterator[Callable[..., EmulatorNode]]:
    """Factory for in-process emulated Ollama nodes: `emulator(models=[...], ...)`.

    Takes EmulatorNode's keyword arguments; every node is stopped when the test ends.
    """
    from sollol.testing.emulator import EmulatorNode

    nodes: list[EmulatorNode] = []

    def start(**kwargs: Any) -> EmulatorNode:
        node = EmulatorNode(**kwargs)
        nodes.append(node)
        return node.start()

    try:
        yield start
    finally:
        for node in reversed(nodes):
            node.stop()


@pytest.fixture
def emulator_process(processes: ProcessGroup) -> Callable[..., str]:
    """Factory for emulated Ollama nodes as separate processes; returns the node's URL.

    `emulator_process("llama3.2:1b", "--tokens-per-second", "50")`: model names, then extra
    command-line flags of `python -m sollol.testing.emulator`. Stopped with the test's group.
    """
    import sys

    from sollol.processes import free_port, wait_http

    def start(*models: str, flags: Sequence[str] = ()) -> str:
        port = free_port()
        args = [sys.executable, "-m", "sollol.testing.emulator", "--port", str(port)]
        for model in models:
            args += ["--model", model]
        proc = processes.start(f"emulator-{port}", [*args, *flags])
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/api/version", process=proc, timeout=30)
        return url

    return start


@pytest.fixture
def pool_gateway() -> Iterator[Callable[..., Any]]:
    """Factory: `pool_gateway(node_address, ..., **config)` -> a running GatewayThread.

    Unlike `gateway`, the cluster loads the installed plugins (so the real pool route serves),
    with `ollama_nodes` set to the given addresses; stopped when the test ends.
    """
    from sollol.cluster import Cluster
    from sollol.gateway import GatewayThread

    running: list[GatewayThread] = []

    def start(*nodes: str, **config: Any) -> GatewayThread:
        cluster = Cluster.from_config(overrides={"ollama_nodes": list(nodes), **config})
        thread = GatewayThread(cluster)
        running.append(thread)
        return thread.start()

    try:
        yield start
    finally:
        for thread in reversed(running):
            thread.stop()



# ------------------------------------------------------------------------------------- gateway


@pytest.fixture
def scripted_node() -> Iterator[Callable[..., Any]]:
    """Factory: `scripted_node(api=..., pause_after_first=...)` -> a started ScriptedNode.

    Every node it started is stopped when the test ends.
    """
    from sollol.testing.scripted_node import ScriptedNode

    nodes: list[ScriptedNode] = []

    def start(**kwargs: Any) -> ScriptedNode:
        node = ScriptedNode(**kwargs).start()
        nodes.append(node)
        return node

    try:
        yield start
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture
def gateway() -> Iterator[Callable[..., Any]]:
    """Factory: `gateway(routes=[...], policies={...}, **config)` -> a running GatewayThread.

    The cluster's plugin manager loads no entry points: a test plugin registers the given route
    providers and policies, and is unregistered when the test ends, after the gateway stops.
    Config keys (e.g. `model_sharding_enabled=True`) override the isolated config.
    """
    from sollol.cluster import Cluster
    from sollol.config import load_config
    from sollol.gateway import GatewayThread
    from sollol.testing.static_route import RoutesPlugin

    running: list[tuple[GatewayThread, SollolPluginManager, RoutesPlugin]] = []

    def start(routes: Sequence[Any] = (), policies: dict[str, Any] | None = None,
              **config: Any) -> GatewayThread:
        pm = get_plugin_manager(load_entry_points=False)
        plugin = RoutesPlugin(routes, policies)
        pm.register(plugin, name="gateway-test-routes")
        cluster = Cluster(config=load_config(overrides=config), pm=pm)
        thread = GatewayThread(cluster)
        running.append((thread, pm, plugin))
        return thread.start()

    try:
        yield start
    finally:
        for thread, pm, plugin in reversed(running):
            thread.stop()
            pm.unregister(plugin)


# ------------------------------------------------------------------------------------ sharding


@pytest.fixture
def rpc_servers(
    processes: ProcessGroup, llama_binaries: Binaries,
) -> Callable[..., list[tuple[str, ManagedProcess]]]:
    """Start real ggml-rpc-servers on loopback: `[(address, proc), ...] = rpc_servers(3)`.

    Each answers an RPC HELLO before this returns; all stop with the test's process group.
    """
    import time

    from sollol_plugins.llamacpp_rpc.probe import ProbeError, probe

    from sollol.processes import free_port

    def start(count: int, *extra: str) -> list[tuple[str, ManagedProcess]]:
        started = []
        for _ in range(count):
            port = free_port()
            proc = processes.start(f"rpc-server-{port}", [
                llama_binaries.rpc_server, "-H", "127.0.0.1", "-p", str(port), "-t", "1", *extra])
            started.append((f"127.0.0.1:{port}", proc))
        for address, proc in started:
            deadline = time.monotonic() + 30
            while True:
                if not proc.alive():
                    pytest.fail(f"rpc-server {address} exited:\n{proc.log_text()[-2000:]}")
                try:
                    probe("127.0.0.1", int(address.rsplit(":", 1)[1]), timeout=2)
                    break
                except ProbeError:
                    if time.monotonic() > deadline:
                        pytest.fail(f"rpc-server {address} never answered HELLO")
                    time.sleep(0.05)
        return started

    return start


@pytest.fixture
def sharding_config(tmp_path: Path, llama_binaries: Binaries) -> Callable[..., Any]:
    """Config for the sharding plugin: `sharding_config(addresses, **more_keys)`.

    Sharding on, distribution off, state (logs, pid files) in tmp, binaries from the fixture.
    """
    from sollol.cluster import load

    def make(addresses: Sequence[str], **more: Any) -> Any:
        overrides = {"model_sharding_enabled": True, "task_distribution_enabled": False,
                     "rpc_backends": list(addresses), "rpc_state_dir": str(tmp_path / "sharding"),
                     "llama_cpp_dir": str(llama_binaries.llama_server.parent),
                     "plugins": ["llamacpp_rpc"], **more}
        config, _pm = load(overrides=overrides)
        return config

    return make


@pytest.fixture
async def sharding_route(sharding_config: Callable[..., Any]) -> Any:
    """Factory for a started ShardingRoute on a real Cluster; every route is stopped (with its
    coordinators) when the test ends: `route = await sharding_route(addresses, **keys)`."""
    from sollol.cluster import Cluster
    from sollol.plugins import get_plugin_manager

    routes: list[Any] = []

    async def start(addresses: Sequence[str], **more: Any) -> Any:
        from sollol_plugins.llamacpp_rpc.route import ShardingRoute

        config = sharding_config(addresses, **more)
        cluster = Cluster(config=config, pm=get_plugin_manager(["llamacpp_rpc"]))
        route = ShardingRoute(cluster)
        routes.append(route)
        await route.start()
        return route

    try:
        yield start
    finally:
        for route in reversed(routes):
            await route.stop()


# ------------------------------------------------------------------------------- local cluster


@pytest.fixture(scope="module")
def local_cluster(
    tmp_path_factory: pytest.TempPathFactory, llama_binaries: Binaries,
) -> Iterator[Any]:
    """A started `sollol.local.LocalCluster` (1 pool node, 1 rpc-server, models in tmp) for a
    test module; stopped, with every process it started, when the module's tests end."""
    from sollol.local import LocalCluster

    cluster = LocalCluster(pool_nodes=1, shards=1, root=tmp_path_factory.mktemp("local"),
                           binaries=llama_binaries)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


# ------------------------------------------------------------------------------ library, batch


@pytest.fixture
def pool_cluster() -> Iterator[Callable[..., Any]]:
    """Factory: `pool_cluster(urls, **config)` -> a not-yet-started `sollol.Cluster` whose
    pool holds exactly these nodes (only the ollama_pool plugin loaded). The test starts it
    (`with` / `async with`); any left running is stopped at teardown."""
    import contextlib

    import sollol

    made: list[Any] = []

    def make(urls: Sequence[str], **config: Any) -> Any:
        cluster = sollol.Cluster(nodes=list(urls), plugins=["ollama_pool"],
                                 pool_eject_seconds=1.0, **config)
        made.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in reversed(made):
            if cluster.running:
                with contextlib.suppress(RuntimeError):  # one started async ended with its loop
                    cluster.stop()


@pytest.fixture
def sollol_process(processes: ProcessGroup, tmp_path: Path) -> Callable[..., ManagedProcess]:
    """Start `sollol ARGS...` (e.g. `batch in.jsonl`) as a child process of the test's group,
    with the isolated config; it is killed at teardown if still running. Log: proc.log_text()."""
    import os
    import sys

    count = 0

    def start(*args: str | Path) -> ManagedProcess:
        nonlocal count
        count += 1
        return processes.start(f"sollol-{count}", [sys.executable, "-m", "sollol", *args],
                               env=dict(os.environ), cwd=tmp_path)

    return start


@pytest.fixture
def wait_for_lines() -> Callable[..., int]:
    """`wait_for_lines(path, n, proc)`: wait until a file a child process writes has n lines."""
    import time

    def wait(path: Path, count: int, proc: ManagedProcess, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = path.read_bytes().count(b"\n") if path.exists() else 0
            if lines >= count:
                return lines
            if not proc.alive():
                pytest.fail(f"{proc.name} exited early:\n{proc.log_text()[-3000:]}")
            time.sleep(0.02)
        pytest.fail(f"fewer than {count} lines in {path} after {timeout:.0f}s:\n"
                    f"{proc.log_text()[-3000:]}")

    return wait
