"""What runs inside a Ray actor on a Ray node: one llama.cpp server process, bound to the node.

The server is started from the actor's main thread (Ray runs a plain actor's methods there)
with `server_child` (PR_SET_PDEATHSIG, SIGPIPE ignored), so it dies with the actor's worker
however that ends: `ray.kill`, the owner (the gateway) gone, the raylet dead. `watch()` blocks
until the server exits, so the gateway learns of a crash from the call's result instead of
polling the process.

These classes are plain: the service wraps them with `ray.remote` (this module never imports
Ray at its top, so the plugin loads without it). Ray's workers import them by module path, so
every Ray node needs SOLLOL installed, like the llama.cpp binaries.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from sollol.config import Config
from sollol.core.processes import ManagedProcess, free_port, server_child, wait_http, wait_port
from sollol.llamacpp import find_binaries, rpc_server_devices


def node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()


def _binaries(llama_cpp_dir: str | None) -> Any:
    """The node's llama.cpp binaries, by the same lookup as the llama.cpp plugin's."""
    return find_binaries(Config(values={"llama_cpp_dir": llama_cpp_dir}), env=os.environ)


def _log_path() -> Path:
    """A log file beside the Ray worker's own (in the Ray session's logs folder, which Ray
    keeps and removes with the session); a temp file when the worker's output is no file."""
    name = f"sollol-server-{os.getpid()}.log"
    try:
        worker_out = Path(os.readlink("/proc/self/fd/1"))
    except OSError:
        worker_out = None
    if worker_out is not None and worker_out.is_file():
        return worker_out.parent / name
    return Path(tempfile.gettempdir()) / name


class _ServerActor:
    """One server process on this node; the subclasses say which."""

    def __init__(self) -> None:
        self.server: ManagedProcess | None = None
        self.log = _log_path()

    def _spawn(self, argv: list[str]) -> ManagedProcess:
        with self.log.open("ab") as out:
            popen = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=server_child)
        self.server = ManagedProcess(Path(argv[0]).name, argv, self.log, popen)
        return self.server

    def watch(self) -> int:
        """Block until the server exits; its exit status."""
        assert self.server is not None
        return self.server.popen.wait()


class RpcServerActor(_ServerActor):
    """A ggml-rpc-server on the node's IP, serving one device (`gpu`) or the node's default."""

    def start(self, llama_cpp_dir: str | None, threads: int, one_gpu: bool,
              timeout: float) -> dict[str, Any]:
        """Start it; what the gateway needs: address, devices, pid, node."""
        import ray

        binaries = _binaries(llama_cpp_dir)
        devices = rpc_server_devices(binaries.rpc_server)
        ip = node_ip()
        port = free_port(ip)
        argv = [str(binaries.rpc_server), "-H", ip, "-p", str(port), "-t", str(threads)]
        served = list(devices)
        gpus = [d for d in devices if d.is_gpu]
        if one_gpu and gpus:
            # Ray hands the actor its GPU; CUDA_VISIBLE_DEVICES already narrows CUDA builds to it
            ids = [int(i) for i in ray.get_gpu_ids()]
            pick = gpus[0] if len(gpus) == 1 or not ids else gpus[ids[0] % len(gpus)]
            argv += ["-d", pick.name]
            served = [pick]
        server = self._spawn(argv)
        # nothing is sent: the rpc-server just sees the connection close
        wait_port(ip, port, process=server, timeout=timeout)
        return {"address": f"{ip}:{port}", "ip": ip, "pid": server.pid,
                "node_id": ray.get_runtime_context().get_node_id(),
                "binary": str(binaries.rpc_server), "log": str(self.log),
                "devices": [d.as_dict() for d in served]}


class LlamaServerActor(_ServerActor):
    """A llama-server serving one named model from a path the node can read."""

    def start(self, llama_cpp_dir: str | None, name: str, path: str, threads: int,
              timeout: float) -> dict[str, Any]:
        import ray

        if not Path(path).is_file():
            raise RuntimeError(f"no model file at {path} on this node ({node_ip()})")
        binaries = _binaries(llama_cpp_dir)
        ip = node_ip()
        port = free_port(ip)
        server = self._spawn([str(binaries.llama_server), "-m", path, "--alias", name,
                              "--host", ip, "--port", str(port), "-t", str(threads)])
        # 503 while the model loads, then 200 (not through the node's $http_proxy)
        wait_http(f"http://{ip}:{port}/health", process=server, timeout=timeout)
        return {"address": f"{ip}:{port}", "ip": ip, "pid": server.pid, "model": name,
                "node_id": ray.get_runtime_context().get_node_id(),
                "binary": str(binaries.llama_server), "log": str(self.log)}
