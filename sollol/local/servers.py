"""A whole SOLLOL cluster on this machine: rpc-servers and llama-server pool nodes on loopback.

`LocalCluster` provisions what is missing (binaries, models), starts the servers, and hands out
the config overrides that point a `Cluster` or a gateway at them. Everything it starts runs in
one ProcessGroup that is stopped on exit, on an error, on Ctrl-C and on SIGTERM/SIGHUP.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import platformdirs

from sollol.config import CORE_SETTINGS, load_config
from sollol.core.processes import ManagedProcess, ProcessGroup, free_port, wait_http, wait_port
from sollol.errors import BinaryNotFound
from sollol.llamacpp import ENV_VAR, Binaries, ProgressCallback, find_binaries, install
from sollol.local.model_set import THRESHOLD, ModelSet, ensure_models
from sollol.local.signals import termination_as_interrupt, uninterrupted

HOST = "127.0.0.1"
POLICY = "size-threshold"
STARTUP_TIMEOUT = 180.0
"""Seconds a server may take to answer; generous, as the machine may be busy compiling."""
NODE_SLOTS = 2
"""Parallel slots per pool node (llama-server --parallel); the pool's concurrency matches it."""
MIN_CONTEXT = 256
EMBEDDING_ARGS = ["--embeddings", "--pooling", "mean"]
Say = Callable[[str], None]


def _default_ctx_size() -> int:
    setting = next(s for s in CORE_SETTINGS if s.name == "local_ctx_size")
    return int(setting.default)


def default_root() -> Path:
    """Where the local cluster keeps its models and run logs: the user data dir."""
    return Path(platformdirs.user_data_dir("sollol")) / "local"


def ensure_binaries(
    progress: ProgressCallback | None = None, *, config_file: Path | None = None,
) -> Binaries:
    """The llama.cpp binaries by the usual lookup order, built into the cache when missing.

    A folder named explicitly (config `llama_cpp_dir`, SOLLOL_LLAMA_CPP_DIR) that lacks them is
    an error, never a reason to build: the user asked for those binaries.
    """
    only = [s for s in CORE_SETTINGS if s.name == "llama_cpp_dir"]
    config = load_config(only, path=config_file, ignore_unknown=True)
    try:
        return find_binaries(config)
    except BinaryNotFound:
        if config.get("llama_cpp_dir") or os.environ.get(ENV_VAR):
            raise
    return install(progress=progress)


@attrs.frozen
class LocalServer:
    """One server the local cluster runs: what it is, where it listens, and its process."""

    role: str
    """"rpc-server" or "pool node"."""
    address: str
    process: ManagedProcess = attrs.field(eq=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.address}"


@attrs.define
class LocalCluster:
    """rpc-servers and pool nodes on loopback, with the models and config to use them."""

    pool_nodes: int = 2
    shards: int = 2
    root: Path = attrs.field(factory=default_root)
    threads: int = 1
    ctx_size: int = attrs.field(factory=lambda: _default_ctx_size())
    """Tokens of context each request gets: every pool node holds this per slot (llama-server
    `-c` is the total, split among its `--parallel` slots), the sharded model's coordinator
    this much (`rpc_ctx_size`)."""
    say: Say | None = None
    build_progress: ProgressCallback | None = None
    binaries: Binaries | None = None
    models: ModelSet | None = None
    servers: list[LocalServer] = attrs.field(factory=list)
    run_dir: Path | None = None
    keep_logs: bool = False
    _group: ProcessGroup | None = None
    _signals: Any = None

    def __attrs_post_init__(self) -> None:
        if self.pool_nodes < 1 or self.shards < 1:
            raise ValueError("a local cluster needs at least one pool node and one rpc-server")
        if self.ctx_size < MIN_CONTEXT:
            raise ValueError(f"a local cluster needs a context of {MIN_CONTEXT} tokens or more")

    @property
    def pool(self) -> list[LocalServer]:
        return [s for s in self.servers if s.role == "pool node"]

    @property
    def rpc(self) -> list[LocalServer]:
        return [s for s in self.servers if s.role == "rpc-server"]

    def start(self) -> LocalCluster:
        """Provision binaries and models, start every server and wait until each answers.

        On any failure (Ctrl-C included) everything started so far is stopped before it raises.
        """
        try:
            self._start()
        except BaseException:
            self.keep_logs = True
            self.stop()
            raise
        return self

    def _start(self) -> None:
        if self.binaries is None:
            self.binaries = ensure_binaries(self.build_progress)
        self.models = ensure_models(self.root, say=self.say)
        logs = self.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=logs))
        self._group = ProcessGroup(log_dir=self.run_dir)
        for _ in range(self.shards):
            port = free_port(HOST)
            proc = self._group.start(f"rpc-server-{port}", [
                self.binaries.rpc_server, "-H", HOST, "-p", str(port), "-t", str(self.threads)])
            self.servers.append(LocalServer("rpc-server", f"{HOST}:{port}", proc))
        small = self.models.small
        for index in range(self.pool_nodes):
            port = free_port(HOST)
            # the first node also serves embeddings (mean pooling: the OpenAI endpoint needs
            # one); the others show how the pool routes around a node that cannot
            embeds = EMBEDDING_ARGS if index == 0 else []
            proc = self._group.start(f"llama-server-{port}", [
                self.binaries.llama_server, "-m", small.path, "--alias", small.name,
                "--host", HOST, "--port", str(port), "-t", str(self.threads),
                "-c", str(self.ctx_size * NODE_SLOTS), "--parallel", str(NODE_SLOTS),
                *embeds])
            self.servers.append(LocalServer("pool node", f"{HOST}:{port}", proc))
        self._say(f"starting {self.shards} rpc-server(s) and {self.pool_nodes} pool node(s) "
                  f"(logs in {self.run_dir})")
        for server in self.servers:
            if server.role == "rpc-server":
                # A bare connect is safe on a fresh rpc-server (it reads EOF and waits again);
                # the protocol-level check is the sharding plugin's health hook.
                host, port = server.address.rsplit(":", 1)
                wait_port(host, int(port), process=server.process, timeout=STARTUP_TIMEOUT)
            else:
                wait_http(server.url + "/health", process=server.process,
                          timeout=STARTUP_TIMEOUT)

    def stop(self) -> None:
        """Stop every server (also when called twice, or after a failed start)."""
        with uninterrupted():
            if self._group is not None:
                self._group.stop_all()
                self._group = None
            self.servers.clear()
            if self.run_dir is not None and not self.keep_logs:
                shutil.rmtree(self.run_dir, ignore_errors=True)

    def overrides(self) -> dict[str, Any]:
        """Config keys that point a Cluster or a gateway at this cluster (both routes on).

        Plugin keys are included: the pool (`openai://` nodes, the store), sharding (state and
        context) and the `size-threshold` policy, with its threshold between the two models.
        """
        if self.models is None or self.binaries is None or not self.servers:
            raise RuntimeError("the local cluster is not running (call start() first)")
        assert self.run_dir is not None
        values: dict[str, Any] = {
            "model_sharding_enabled": True,
            "task_distribution_enabled": True,
            "ollama_nodes": [f"openai://{s.address}" for s in self.pool],
            "rpc_backends": [s.address for s in self.rpc],
            "routing_policy": POLICY,
            "policy_settings": {POLICY: {"min_parameters": THRESHOLD}},
            "ollama_models_dir": str(self.models.store),
            "pool_node_concurrency": NODE_SLOTS,
            "rpc_state_dir": str(self.run_dir / "sharding"),
            "rpc_ctx_size": self.ctx_size,
            # Loopback rpc-servers report all of this machine's RAM as free: declare what each
            # may give, as an operator of CPU shards would, so the large model needs all of them.
            "rpc_backend_memory": {s.address: self.shard_memory() for s in self.rpc},
        }
        folder = self.binaries.llama_server.parent
        if self.binaries.rpc_server.parent == folder:  # the plugin must run these very binaries
            values["llama_cpp_dir"] = str(folder)
        return values

    def shard_memory(self) -> int:
        """Bytes each local rpc-server may give: a little more than its share of the large
        model, so that the fewest rpc-servers that hold it are all of them."""
        from sollol.core.gguf_info import read_model_info

        assert self.models is not None
        info = read_model_info(self.models.large.path)
        needed = (info.file_size or 0) + (info.kv_bytes_per_token or 0) * self.ctx_size
        count = max(1, len(self.rpc))
        return needed * (2 * count + 1) // (2 * count * count)  # (n-1) of these < needed <= n

    def _say(self, text: str) -> None:
        if self.say is not None:
            self.say(text)

    def __enter__(self) -> LocalCluster:
        self._signals = termination_as_interrupt()
        self._signals.__enter__()
        try:
            return self.start()
        except BaseException:
            self._signals.__exit__(None, None, None)
            raise

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            if exc_type is not None and exc_type is not KeyboardInterrupt:
                self.keep_logs = True
            self.stop()
        finally:
            self._signals.__exit__(None, None, None)
