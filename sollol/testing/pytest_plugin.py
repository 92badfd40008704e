"""SOLLOL's pytest plugin: fixtures that start real servers for tests, and always stop them.

Installed with SOLLOL (entry point group `pytest11`), so a plugin author's tests can use them with
no conftest of their own. Everything here is opt-in: no fixture is autouse, and nothing heavy is
imported until a test asks for a fixture. See docs/testing-plugins.md.

Sections: processes, llama.cpp (binaries, tiny models, store, servers), emulated and scripted
nodes, gateways, multi-host tests (network namespaces).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:
    from sollol.core.processes import ManagedProcess, ProcessGroup
    from sollol.gateway import GatewayThread
    from sollol.llamacpp import Binaries
    from sollol.testing.emulator import EmulatorNode
    from sollol.testing.netns import Network
    from sollol.testing.ollama_store import OllamaStoreBuilder
    from sollol.testing.scripted_node import ScriptedNode

T = TypeVar("T")


def stopped_at_teardown(make: Callable[..., T], stop: Callable[[T], object],
                        start: Callable[[T], T] | None = None) -> Iterator[Callable[..., T]]:
    """The body of a factory fixture: `yield from stopped_at_teardown(make, stop)`.

    The test calls the factory to `make` things (then `start` each, if given); every one made
    is stopped at teardown, newest first, also when its start failed or the test did.
    """
    made: list[T] = []

    def factory(*args: Any, **kwargs: Any) -> T:
        item = make(*args, **kwargs)
        made.append(item)
        return start(item) if start is not None else item

    try:
        yield factory
    finally:
        for item in reversed(made):
            stop(item)


# ------------------------------------------------------------------------------------ processes


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[ProcessGroup]:
    """A process group for one test; everything in it is stopped when the test ends."""
    from sollol.core.processes import ProcessGroup

    group = ProcessGroup(log_dir=tmp_path / "logs")
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture(scope="session")
def session_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessGroup]:
    """A process group shared by the whole session (slow-to-start servers)."""
    from sollol.core.processes import ProcessGroup

    group = ProcessGroup(log_dir=tmp_path_factory.mktemp("session-logs"))
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture
def sollol_isolated_config(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
                           monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point SOLLOL at an empty config file in tmp and clear SOLLOL_* and OLLAMA_* from the env.

    GGUF files under pytest's temporary folders (`tiny_model`, files a test writes) may be
    named by path: `gguf_dirs` is set to the session's temp root (SOLLOL_GGUF_DIRS).
    Returns the config file's path (it does not exist until something writes it).
    """
    for name in list(os.environ):
        if name.startswith("SOLLOL_") or name in ("OLLAMA_HOSTS", "OLLAMA_MODELS"):
            monkeypatch.delenv(name)
    path = tmp_path / "config" / "config.toml"
    monkeypatch.setenv("SOLLOL_CONFIG", str(path))
    monkeypatch.setenv("SOLLOL_GGUF_DIRS", str(tmp_path_factory.getbasetemp()))
    return path


# ------------------------------------------------------------------------------------ llama.cpp


@pytest.fixture(scope="session")
def llama_binaries() -> Binaries:
    """The real llama-server and ggml-rpc-server; FAILS (never skips) when they are missing.

    Honours SOLLOL_LLAMA_CPP_DIR, PATH and the build cache, not the user's config file.
    """
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
    from sollol.core.processes import free_port, wait_http

    def start(model: Path, *extra: str, threads: int = 1) -> tuple[str, ManagedProcess]:
        port = free_port()
        args = [llama_binaries.llama_server, "-m", model, "--host", "127.0.0.1",
                "--port", str(port), "-t", str(threads), "-c", "512", *extra]
        proc = processes.start(f"llama-server-{port}", args)
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/health", process=proc, timeout=120)
        return url, proc

    return start


@pytest.fixture
def rpc_servers(
    processes: ProcessGroup, llama_binaries: Binaries,
) -> Callable[..., list[tuple[str, ManagedProcess]]]:
    """Start real ggml-rpc-servers on loopback: `[(address, proc), ...] = rpc_servers(3)`.

    Each is accepting connections before this returns; all stop with the test's process group.
    """
    from sollol.core.processes import free_port, wait_port

    def start(count: int, *extra: str) -> list[tuple[str, ManagedProcess]]:
        started = []
        for _ in range(count):
            port = free_port()
            proc = processes.start(f"rpc-server-{port}", [
                llama_binaries.rpc_server, "-H", "127.0.0.1", "-p", str(port), "-t", "1", *extra])
            started.append((f"127.0.0.1:{port}", proc))
        for address, proc in started:
            try:  # nothing is sent on this connection, so the server just sees it close
                wait_port("127.0.0.1", int(address.rsplit(":", 1)[1]), process=proc, timeout=30)
            except (RuntimeError, TimeoutError) as exc:
                pytest.fail(f"rpc-server {address} did not start: {exc}")
        return started

    return start


# -------------------------------------------------------------------- emulated and scripted nodes


@pytest.fixture
def emulator() -> Iterator[Callable[..., EmulatorNode]]:
    """Factory for in-process emulated Ollama nodes: `emulator(models=[...], ...)`.

    Takes EmulatorNode's keyword arguments (faults included); every node is stopped at the end.
    """
    from sollol.testing.emulator import EmulatorNode

    yield from stopped_at_teardown(EmulatorNode, EmulatorNode.stop, EmulatorNode.start)


@pytest.fixture
def emulator_process(processes: ProcessGroup) -> Callable[..., str]:
    """Factory for emulated Ollama nodes as separate processes; returns the node's URL.

    `emulator_process("llama3.2:1b", flags=["--tokens-per-second", "50"])`: model names, then
    extra flags of `python -m sollol.testing.emulator`. Stopped with the test's group.
    """
    import sys

    from sollol.core.processes import free_port, wait_http

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
def scripted_node() -> Iterator[Callable[..., ScriptedNode]]:
    """Factory: `scripted_node(api="openai"|"ollama", pause_after_first=...)` -> a started
    ScriptedNode that records every request body; every node is stopped at the end."""
    from sollol.testing.scripted_node import ScriptedNode

    yield from stopped_at_teardown(ScriptedNode, ScriptedNode.stop, ScriptedNode.start)


# --------------------------------------------------------------------------------------- gateway


@pytest.fixture
def sollol_gateway(sollol_isolated_config: Path) -> Iterator[Callable[..., GatewayThread]]:
    """Factory for a running gateway on loopback with a chosen plugin set, stopped at the end.

    `sollol_gateway(plugins=["ollama_pool", "my_plugin"], register=[obj], **config)`:
    `plugins` is the allow-list of installed plugins (None: all), `register` adds plugin objects
    defined in the test, and keyword arguments are config keys (`ollama_nodes=[url]`).
    The config file and SOLLOL_* variables of the machine are ignored.
    """
    from sollol.core.runtime import ClusterRuntime, load
    from sollol.gateway import GatewayThread

    def make(plugins: Sequence[str] | None = None, register: Collection[object] = (),
             **config: Any) -> GatewayThread:
        overrides = dict(config)
        if plugins is not None:
            overrides["plugins"] = list(plugins)
        loaded, pm = load(overrides=overrides, register=register)
        return GatewayThread(ClusterRuntime(config=loaded, pm=pm))

    yield from stopped_at_teardown(make, GatewayThread.stop, GatewayThread.start)


# ----------------------------------------------------------------------------- multi-host tests


@pytest.fixture
def sollol_network(tmp_path: Path) -> Iterator[Network]:
    """A bridge with hosts in network namespaces (`net.add_host("node-a")`), torn down at the
    end with every process in it. Only inside `sollol.testing.netns.run_isolated(...)`: a test
    that cuts links must not run in the machine's own namespace (see docs/testing-plugins.md)."""
    from sollol.testing.netns import Network, isolated

    if not isolated():
        pytest.fail("sollol_network needs a network namespace of the test's own: run the test "
                    "module through sollol.testing.netns.run_isolated([sys.executable, '-m', "
                    "'pytest', MODULE]) as root")
    net = Network(log_dir=tmp_path / "netns").start()
    try:
        yield net
    finally:
        net.close()
