"""Every rpc-server SOLLOL starts ignores SIGPIPE.

ggml-rpc-server sends without MSG_NOSIGNAL. With SIGPIPE's default action it dies whenever its
client goes away while it answers: a coordinator killed at its startup timeout, or cut off
after a lost link, took its rpc-servers down with it. Each test here starts rpc-servers one
way SOLLOL does and reads each one's signal mask.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import tomli_w
from test_rpc_cli import serve_rpc

from sollol.core.processes import command_name, descendants, ignores_sigpipe


def rpc_server_pids(root: int) -> list[int]:
    """`root` and the processes below it that run ggml-rpc-server."""
    return [pid for pid in [root, *sorted(descendants(root))]
            if command_name(pid) == "ggml-rpc-server"]


@pytest.mark.parametrize("client_timeout", ["20", "0"], ids=["watched", "exec"])
def test_sollol_rpc_serve(processes, llama_binaries, tmp_path: Path, client_timeout: str) -> None:
    """`sollol rpc serve` runs it as a child (dropping silent clients) or, with
    --client-timeout 0, in its own place."""
    config = tmp_path / "serve.toml"
    config.write_text(tomli_w.dumps({"llama_cpp_dir": str(llama_binaries.rpc_server.parent),
                                     "plugins": ["llamacpp_rpc"]}))
    proc, _port, _answer = serve_rpc(processes, config, "--client-timeout", client_timeout)
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
