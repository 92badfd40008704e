"""What runs inside a Ray actor on a Ray node: one llama.cpp server process, bound to the node.

The server is started from the actor's main thread (Ray runs a plain actor's methods there)
with PR_SET_PDEATHSIG, so it dies with the actor's worker however that ends: `ray.kill`, the
owner (the gateway) gone, the raylet dead. `watch()` blocks until the server exits, so the
gateway learns of a crash from the call's result instead of polling the process.

These classes are plain: the service wraps them with `ray.remote` (this module never imports
Ray at its top, so the plugin loads without it). Ray's workers import them by module path, so
every Ray node needs SOLLOL installed, like the llama.cpp binaries.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from sollol.config import Config
from sollol.core.processes import free_port, server_child
from sollol.llamacpp import find_binaries, rpc_server_devices


def node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()


def _binaries(llama_cpp_dir: str | None) -> Any:
    """The node's llama.cpp binaries, by the same lookup as the llama.cpp plugin's."""
    return find_binaries(Config(values={"llama_cpp_dir": llama_cpp_dir}), env=os.environ)


def _wait_listening(popen: subprocess.Popen[bytes], host: str, port: int, timeout: float,
                    log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the server exited with status {popen.returncode}:\n{tail}")
        try:
            # nothing is sent: the rpc-server just sees the connection close
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)  # a port has no event to wait on
    raise RuntimeError(f"the server did not listen on {host}:{port} within {timeout:.0f} s")


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
        self.popen: subprocess.Popen[bytes] | None = None
        self.log = _log_path()

    def _spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=server_child)
        return self.popen

    def watch(self) -> int:
        """Block until the server exits; its exit status."""
        assert self.popen is not None
        return self.popen.wait()

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


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
        popen = self._spawn(argv)
        _wait_listening(popen, ip, port, timeout, self.log)
        return {"address": f"{ip}:{port}", "ip": ip, "pid": popen.pid,
                "node_id": ray.get_runtime_context().get_node_id(),
                "binary": str(binaries.rpc_server), "log": str(self.log),
                "devices": [d.as_dict() for d in served]}


class LlamaServerActor(_ServerActor):
    """A llama-server serving one named model from a path the node can read."""

    def start(self, llama_cpp_dir: str | None, name: str, path: str, threads: int,
              timeout: float) -> dict[str, Any]:
        import httpx
        import ray

        if not Path(path).is_file():
            raise RuntimeError(f"no model file at {path} on this node ({node_ip()})")
        binaries = _binaries(llama_cpp_dir)
        ip = node_ip()
        port = free_port(ip)
        popen = self._spawn([str(binaries.llama_server), "-m", path, "--alias", name,
                             "--host", ip, "--port", str(port), "-t", str(threads)])
        deadline = time.monotonic() + timeout
        _wait_listening(popen, ip, port, timeout, self.log)
        while True:  # 503 while the model loads, then 200
            status = httpx.get(f"http://{ip}:{port}/health", timeout=5).status_code
            if status == 200:
                break
            if popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"llama-server for {name} never became healthy:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.1)  # /health has no push
        return {"address": f"{ip}:{port}", "ip": ip, "pid": popen.pid, "model": name,
                "node_id": ray.get_runtime_context().get_node_id(),
                "binary": str(binaries.llama_server), "log": str(self.log)}
