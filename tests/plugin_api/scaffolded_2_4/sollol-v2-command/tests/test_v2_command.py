"""Tests for the `sollol v2-command` command, against a real gateway over an emulated Ollama node."""

from __future__ import annotations

import json
import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sollol", *args], capture_output=True,
                          text=True)


def test_lists_the_gateways_models(sollol_gateway, emulator) -> None:
    node = emulator(models=["llama3.2:1b"])
    gateway = sollol_gateway(plugins=["ollama_pool"], ollama_nodes=[node.url])
    done = run("v2-command", "--gateway", gateway.url)
    assert done.returncode == 0, done.stderr
    names = [json.loads(line)["name"] for line in done.stdout.splitlines()]
    assert "llama3.2:1b" in names


def test_no_gateway_is_a_one_line_error() -> None:
    done = run("v2-command", "--gateway", "http://127.0.0.1:9")
    assert done.returncode == 1
    assert done.stderr.startswith("Error: cannot ask the gateway")
