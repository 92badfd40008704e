"""The operator's key for the CLI (issue 28, finding 2): `sollol keys create NAME --admin --save`
keeps it for the commands that ask a real running gateway, and each says which key it sent when
refused (never a silent fallback to local state)."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import httpx
import pytest
import tomli_w
from click.testing import CliRunner

from sollol.cli import build_cli
from sollol.cli.credentials import key_file
from sollol.core.processes import free_port, wait_http


def sollol(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(build_cli(), list(args), env=env)


@pytest.fixture
def keyed_gateway(isolated_config: Path, processes, llama_binaries) -> tuple[str, str]:
    """A real `sollol run` whose config requires keys, with the admin key made by the CLI and
    saved for it; returns (url, key)."""
    port = free_port()
    isolated_config.parent.mkdir(parents=True, exist_ok=True)
    isolated_config.write_text(tomli_w.dumps({
        "gateway_port": port, "ollama_nodes": [f"127.0.0.1:{free_port()}"],
        "model_sharding_enabled": True, "rpc_backends": [],
        "llama_cpp_dir": str(llama_binaries.llama_server.parent)}))
    created = sollol("keys", "create", "me", "--admin", "--save")
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    proc = processes.start("sollol-run", [sys.executable, "-m", "sollol", "run"],
                           env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/api/version", process=proc, timeout=60,
              headers={"Authorization": f"Bearer {key}"})
    return url, key


def test_the_saved_key_is_private_and_sent_by_every_command(keyed_gateway) -> None:
    url, key = keyed_gateway
    saved = key_file()
    assert saved.read_text().strip() == key
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    status = sollol("status", "--json")
    assert status.exit_code == 0, status.output
    assert "nodes" in json.loads(status.stdout)
    shards = sollol("shard", "status", "--json", "--gateway", url)
    assert shards.exit_code == 0, shards.output
    assert json.loads(shards.stdout)["source"] == f"gateway {url}"
    route = sollol("route", "no-such-model", "--json")
    assert json.loads(route.stdout)["source"] == f"gateway {url}", route.output


@pytest.mark.usefixtures("keyed_gateway")
def test_without_a_key_each_command_says_so_and_never_falls_back() -> None:
    key_file().unlink()
    for args in (["status"], ["shard", "status"], ["route", "m"], ["rpc", "add", "127.0.0.1:1"]):
        result = sollol(*args)
        assert result.exit_code == 1, (args, result.output)
        assert "sent no key" in result.output and "--save" in result.output, result.output
        assert "decided here" not in result.output and "pid files" not in result.stdout
    wrong = sollol("status", env={"SOLLOL_KEY": "sollol-not-a-key-we-know-of-at-all"})
    assert wrong.exit_code == 1
    assert "does not accept the key from $SOLLOL_KEY" in wrong.output


def test_an_inference_key_is_told_it_needs_an_admin_key(keyed_gateway) -> None:
    made = sollol("keys", "create", "app", "--no-save")
    assert made.exit_code == 0, made.output
    assert "now send" not in made.output
    # the gateway reads keys on reload: reload it with the admin key
    url, admin = keyed_gateway
    reply = httpx.post(url + "/sollol/reload", headers={"Authorization": f"Bearer {admin}",
                                                        "X-Requested-With": "test"})
    assert reply.status_code == 200, reply.text
    result = sollol("status", env={"SOLLOL_KEY": made.stdout.strip()})
    assert result.exit_code == 1
    assert "the key from $SOLLOL_KEY is not allowed this: it needs an admin key" in result.output
