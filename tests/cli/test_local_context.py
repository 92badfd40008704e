"""`sollol run --local N --ctx-size T`: each request gets T tokens of context on the local nodes,
and a prompt longer than that is refused with a 400 that says how to raise it (issue 26.4)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from sollol.core.processes import ProcessGroup, free_port, wait_http
from sollol.local import LocalCluster

pytestmark = pytest.mark.llamacpp
TIMEOUT = 300.0


def words(count: int) -> str:
    return " ".join(["hello"] * count)


def test_local_nodes_take_the_context_size_per_request(local_cluster: LocalCluster) -> None:
    """The default (setting local_ctx_size, 16384) on every slot of every pool node."""
    for node in local_cluster.pool:
        slots = httpx.get(node.url + "/slots", timeout=10).json()
        assert [s["n_ctx"] for s in slots] == [16384, 16384]
    assert local_cluster.overrides()["rpc_ctx_size"] == 16384


def test_a_small_context_cluster_refuses_a_long_prompt_saying_how_to_raise_it(
    processes: ProcessGroup, tmp_path: Path, llama_binaries: Any,
) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "XDG_DATA_HOME": str(tmp_path / "data"),
           "SOLLOL_LLAMA_CPP_DIR": str(llama_binaries.llama_server.parent)}
    proc = processes.start("run", [sys.executable, "-m", "sollol", "run", "--local", "1",
                                   "--ctx-size", "512", "--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/api/version", process=proc, timeout=TIMEOUT)
    assert "context: 512 tokens per request (--ctx-size)" in proc.log_text()
    fits = httpx.post(url + "/v1/chat/completions", timeout=TIMEOUT, json={
        "model": "sollol-demo-small", "max_tokens": 2,
        "messages": [{"role": "user", "content": words(150)}]})
    assert fits.status_code == 200, fits.text
    for path, body, message in (
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": words(900)}]},
         lambda r: r["error"]["message"]),
        ("/v1/messages", {"max_tokens": 8, "stream": True,
                          "messages": [{"role": "user", "content": words(900)}]},
         lambda r: r["error"]["message"]),
        ("/api/chat", {"messages": [{"role": "user", "content": words(900)}]},
         lambda r: r["error"]),
    ):
        refused = httpx.post(url + path, timeout=TIMEOUT,
                             json={"model": "sollol-demo-small", **body})
        assert refused.status_code == 400, refused.text
        text = message(refused.json())
        assert "exceeds the available context size (512 tokens)" in text, text
        assert "sollol run --local N --ctx-size TOKENS" in text and "local_ctx_size" in text
    openai_error = httpx.post(url + "/v1/chat/completions", timeout=TIMEOUT, json={
        "model": "sollol-demo-small",
        "messages": [{"role": "user", "content": words(900)}]}).json()["error"]
    assert openai_error["code"] == "context_length_exceeded"
    figures = openai_error["numbers"]
    assert figures["n_ctx"] == 512 and figures["n_prompt_tokens"] > 512


def test_make_tiny_records_the_context_size(tmp_path: Path) -> None:
    """llama-server caps each slot at the context a model records: make-tiny takes one."""
    from click.testing import CliRunner

    from sollol.cli import build_cli
    from sollol.core.gguf_info import read_model_info

    path = tmp_path / "long.gguf"
    args = ["models", "make-tiny", str(path), "--ctx-size", "32768"]
    result = CliRunner().invoke(build_cli(), args)
    assert result.exit_code == 0, result.output
    assert read_model_info(path).context_length == 32768
