"""Every rpc-server SOLLOL starts ignores SIGPIPE.

ggml-rpc-server sends without MSG_NOSIGNAL. With SIGPIPE's default action it dies whenever its
client goes away while it answers: a coordinator killed at its startup timeout, or cut off
after a lost link, took its rpc-servers down with it. Each test here starts rpc-servers one
way SOLLOL does and reads each one's signal mask.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import tomli_w
from sollol_plugins.llamacpp_rpc.rpc_probe import ProbeError, probe

from sollol.core.processes import descendants, free_port, ignores_sigpipe


def rpc_server_pids(root: int) -> list[int]:
    """`root` and the processes below it that run ggml-rpc-server."""
    found = []
    for pid in [root, *sorted(descendants(root))]:
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "ggml-rpc-server":
                found.append(pid)
        except OSError:
            continue
    return found


@pytest.mark.parametrize("client_timeout", ["20", "0"], ids=["watched", "exec"])
def test_sollol_rpc_serve(processes, llama_binaries, tmp_path: Path, client_timeout: str) -> None:
    """`sollol rpc serve` runs it as a child (dropping silent clients) or, with
    --client-timeout 0, in its own place."""
    config = tmp_path / "serve.toml"
    config.write_text(tomli_w.dumps({"llama_cpp_dir": str(llama_binaries.rpc_server.parent),
                                     "plugins": ["llamacpp_rpc"]}))
    port = free_port()
    proc = processes.start("sollol-rpc-serve", [
        sys.executable, "-m", "sollol", "rpc", "serve", "--port", str(port), "--threads", "1",
        "--client-timeout", client_timeout], env={**os.environ, "SOLLOL_CONFIG": str(config)})
    deadline = time.monotonic() + 60
    while True:
        assert proc.alive(), proc.log_text()
        try:
            probe("127.0.0.1", port, 2)
            break
        except ProbeError:
            assert time.monotonic() < deadline, proc.log_text()
            time.sleep(0.1)
    (pid,) = rpc_server_pids(proc.pid)
    assert (pid == proc.pid) is (client_timeout == "0")
    assert ignores_sigpipe(pid)


def test_the_test_fixture(rpc_servers) -> None:
    ((_address, proc),) = rpc_servers(1)
    assert ignores_sigpipe(proc.pid)


def test_a_plain_child_of_ours_would_not() -> None:
    """What this file guards against: a child started the usual way gets SIGPIPE's default
    back (Python ignores it, and subprocess restores it for the child)."""
    import subprocess

    child = subprocess.Popen(["sleep", "30"])
    try:
        assert not ignores_sigpipe(child.pid)
    finally:
        child.kill()
        child.wait()
