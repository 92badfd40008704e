"""Fixtures of SOLLOL's own test suite, on top of the public ones in `sollol.testing.pytest_plugin`.

The public plugin (loaded by pytest through its `pytest11` entry point, as for any plugin author)
starts the real processes: `processes`, `llama_binaries`, `tiny_model`, `ollama_store`,
`llama_server`, `rpc_servers`, `emulator`, `emulator_process`, `scripted_node`, `sollol_gateway`,
`sollol_network`.
This module adds the suite's own compositions of them. Every fixture that starts a process does
so through a `ProcessGroup` or an owner object that is stopped at teardown.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import settings

from sollol.core.plugin_manager import SollolPluginManager, get_plugin_manager
from sollol.core.processes import ProcessGroup
from sollol.testing.pytest_plugin import stopped_at_teardown

if TYPE_CHECKING:
    from sollol.core.processes import ManagedProcess
    from sollol.llamacpp import Binaries



def pytest_configure(config: pytest.Config) -> None:
    """The real-process fixtures come from SOLLOL's pytest plugin: say so if it is missing."""
    import sollol.testing.pytest_plugin as public

    if not config.pluginmanager.is_registered(public):
        msg = ("SOLLOL's pytest plugin (entry point pytest11 `sollol`) is not installed in this "
               "environment: run `pip install -e '.[test]'` again (or PYTEST_DISABLE_PLUGIN_"
               "AUTOLOAD is set: add `-p sollol.testing.pytest_plugin`)")
        raise pytest.UsageError(msg)


# ---------------------------------------------------------------------------------------- core

# Property-based tests: no per-example deadline (the machine is shared and slow); in CI
# (`CI` set, as .ci/run does) a fixed seed and no example database, so a run is reproducible.
settings.register_profile("dev", deadline=None, max_examples=200)
settings.register_profile("ci", deadline=None, max_examples=200, derandomize=True,
                          database=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")



@pytest.fixture
def pm() -> SollolPluginManager:
    """A fresh plugin manager with every installed plugin."""
    return get_plugin_manager()


@pytest.fixture(autouse=True)
def isolated_config(sollol_isolated_config: Path) -> Path:
    """Every test runs on an empty config file in tmp, with SOLLOL_* and OLLAMA_* cleared."""
    return sollol_isolated_config


@pytest.fixture(scope="module", autouse=True)
def no_rpc_server_left_attached() -> Iterator[None]:
    """After a module (and its module-scoped gateways) no rpc-server address may still be
    marked attached in this process: a later rpc-server on that port would never be probed."""
    from sollol_plugins.llamacpp_rpc import attached

    yield
    left = attached.all_owners()
    if left:
        attached.detach(left)  # so the next module starts clean
        pytest.fail(f"rpc-server addresses left attached: {left}")


# ------------------------------------------------------------------------------------ pool


@pytest.fixture
def pool_gateway() -> Iterator[Callable[..., Any]]:
    """Factory: `pool_gateway(node_address, ..., **config)` -> a running GatewayThread.

    Unlike `gateway`, the cluster loads the installed plugins (so the real pool route serves),
    with `ollama_nodes` set to the given addresses; stopped when the test ends.
    """
    from sollol.core.runtime import ClusterRuntime
    from sollol.gateway import GatewayThread

    def make(*nodes: str, **config: Any) -> GatewayThread:
        return GatewayThread(ClusterRuntime.from_config(overrides={"ollama_nodes": list(nodes),
                                                            **config}))

    yield from stopped_at_teardown(make, GatewayThread.stop, GatewayThread.start)



# ------------------------------------------------------------------------------------- gateway


@pytest.fixture
def hostile_node() -> Iterator[Callable[..., Any]]:
    """Factory: `hostile_node(script, on_connect=None)` -> a started HostileNode (raw TCP server
    playing a script of broken HTTP); every one started is stopped when the test ends."""
    from sollol.testing.hostile_node import HostileNode

    yield from stopped_at_teardown(HostileNode, HostileNode.stop, HostileNode.start)


@pytest.fixture
def gateway() -> Iterator[Callable[..., Any]]:
    """Factory: `gateway(routes=[...], policies={...}, **config)` -> a running GatewayThread.

    The cluster's plugin manager loads no entry points: a test plugin registers the given route
    providers and policies, and is unregistered when the test ends, after the gateway stops.
    Config keys (e.g. `model_sharding_enabled=True`) override the isolated config.
    """
    from sollol.config import load_config
    from sollol.core.runtime import ClusterRuntime
    from sollol.gateway import GatewayThread
    from sollol.testing.static_route import RoutesPlugin

    running: list[tuple[GatewayThread, SollolPluginManager, RoutesPlugin]] = []

    def start(routes: Sequence[Any] = (), policies: dict[str, Any] | None = None,
              **config: Any) -> GatewayThread:
        pm = get_plugin_manager(load_entry_points=False)
        plugin = RoutesPlugin(routes, policies)
        pm.register(plugin, name="gateway-test-routes")
        cluster = ClusterRuntime(config=load_config(overrides=config), pm=pm)
        thread = GatewayThread(cluster)
        running.append((thread, pm, plugin))
        return thread.start()

    try:
        yield start
    finally:
        for thread, pm, plugin in reversed(running):
            thread.stop()
            pm.unregister(plugin)


@pytest.fixture(scope="module")
def asgi_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The gateway's ASGI app, driven in-process, over the real pool route with two nodes: an
    emulated Ollama node (`OLLAMA_MODELS` of `sollol.testing.asgi_client`) and a scripted
    OpenAI-compatible node (`OPENAI_MODEL`), so both dialects and both translations are served.

    Yields an `AsgiGateway` (`.request(method, path, body=..., query=...)` -> httpx.Response,
    `.gateway`, `.errors`: log records of the gateway that carried a traceback). Everything
    started is stopped at teardown.
    """
    import os

    from sollol.testing.asgi_client import OLLAMA_MODELS, OPENAI_MODEL, AsgiGateway
    from sollol.testing.emulator import EmulatorNode
    from sollol.testing.scripted_node import ScriptedNode

    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("SOLLOL_"):
                patch.delenv(name)
        patch.setenv("SOLLOL_CONFIG", str(tmp_path_factory.mktemp("asgi") / "config.toml"))
        node = EmulatorNode(models=OLLAMA_MODELS).start()
        openai = ScriptedNode(api="openai", models=(OPENAI_MODEL,)).start()
        client = None
        try:
            address = openai.url.removeprefix("http://")
            client = AsgiGateway.start(ollama_nodes=[node.url, f"openai://{address}"],
                                       pool_eject_seconds=0.1, health_interval=0.5)
            client.wait_healthy(2)
            yield client
        finally:
            if client is not None:
                client.stop()
            openai.stop()
            node.stop()


# ------------------------------------------------------------------------------------ sharding


@pytest.fixture
def sharding_config(tmp_path: Path, llama_binaries: Binaries) -> Callable[..., Any]:
    """Config for the sharding plugin: `sharding_config(addresses, **more_keys)`.

    Sharding on, distribution off, state (logs, pid files) in tmp, binaries from the fixture.
    """
    from sollol.core.runtime import load

    def make(addresses: Sequence[str], **more: Any) -> Any:
        overrides = {"model_sharding_enabled": True, "task_distribution_enabled": False,
                     "rpc_backends": list(addresses), "rpc_state_dir": str(tmp_path / "sharding"),
                     "llama_cpp_dir": str(llama_binaries.llama_server.parent),
                     "plugins": ["llamacpp_rpc"], **more}
        config, _pm = load(overrides=overrides)
        return config

    return make


@pytest.fixture
def sharding_gateway(sharding_config: Callable[..., Any]) -> Iterator[Callable[..., Any]]:
    """Factory: `sharding_gateway(addresses, **keys)` -> a running GatewayThread whose only
    plugin is llamacpp_rpc, loaded through its entry point; stopped when the test ends."""
    from sollol.core.runtime import ClusterRuntime
    from sollol.gateway import GatewayThread

    def make(addresses: Sequence[str], **more: Any) -> GatewayThread:
        return GatewayThread(ClusterRuntime(config=sharding_config(addresses, **more),
                                     pm=get_plugin_manager(["llamacpp_rpc"])))

    yield from stopped_at_teardown(make, GatewayThread.stop, GatewayThread.start)


@pytest.fixture
async def sharding_route(sharding_config: Callable[..., Any]) -> Any:
    """Factory for a started ShardingRoute on a real runtime; every route is stopped (with its
    coordinators) when the test ends: `route = await sharding_route(addresses, **keys)`."""
    from sollol.core.plugin_manager import get_plugin_manager
    from sollol.core.runtime import ClusterRuntime

    routes: list[Any] = []

    async def start(addresses: Sequence[str], **more: Any) -> Any:
        from sollol_plugins.llamacpp_rpc.sharding_route import ShardingRoute

        config = sharding_config(addresses, **more)
        cluster = ClusterRuntime(config=config, pm=get_plugin_manager(["llamacpp_rpc"]))
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
def rpc_serve(processes: ProcessGroup, llama_binaries: Binaries,
              tmp_path: Path) -> Callable[[Path], str]:
    """Start `sollol rpc serve` (the CPU build) as a user runs it, recording its devices' names
    in the state dir given; returns its address once it answers. Stopped at teardown."""
    import os
    import sys

    import tomli_w

    from sollol.core.processes import free_port, wait_port

    def start(state: Path) -> str:
        config = tmp_path / f"serve-{free_port()}.toml"
        config.write_text(tomli_w.dumps({"llama_cpp_dir": str(llama_binaries.rpc_server.parent),
                                         "plugins": ["llamacpp_rpc"],
                                         "rpc_state_dir": str(state)}))
        port = free_port()
        proc = processes.start(f"sollol-rpc-serve-{port}", [
            sys.executable, "-m", "sollol", "rpc", "serve", "--port", str(port), "--threads", "1"],
            env={**os.environ, "SOLLOL_CONFIG": str(config)})
        wait_port("127.0.0.1", port, process=proc, timeout=120)
        return f"127.0.0.1:{port}"

    return start


@pytest.fixture
def fake_terminal(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], Any]:
    """`fake_terminal(columns)`: stdout becomes a colour terminal that many columns wide, whose
    output the returned StringIO holds (rich and our TTY checks take it for a real one)."""
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    def make(columns: int) -> io.StringIO:
        screen = Terminal()
        monkeypatch.setattr(sys, "stdout", screen)
        monkeypatch.setenv("TERM", "xterm-256color")
        monkeypatch.setenv("COLUMNS", str(columns))
        monkeypatch.delenv("NO_COLOR", raising=False)
        return screen

    return make


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


# ------------------------------------------------------------------------------------- browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]
"""Debian's chromium, kept off the internet (PROTOCOLS.md: "A real browser for dashboard
tests"); the browser never loads anything but the gateway's loopback pages."""


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """A headless Debian Chromium driven by Playwright; FAILS (never skips) when it is missing.

    `scripts/test` installs it (`apt-get install chromium`); never `playwright install`.
    """
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (scripts/test does, "
                    "as root: apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
