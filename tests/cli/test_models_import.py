"""`sollol models import FILE NAME[:TAG]` (issue 28, finding 10): a GGUF file goes into the
Ollama-layout store that a real running gateway reads, with no Ollama on the machine."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import httpx
import pytest
import tomli_w
from click.testing import CliRunner

from sollol.cli import build_cli
from sollol.core.processes import free_port, wait_http

NAME = "imported/tiny"
LISTED = "imported/tiny:latest"


def sollol(*args: str):
    return CliRunner().invoke(build_cli(), list(args))


@pytest.mark.llamacpp
def test_an_imported_model_is_served_by_a_running_gateway(
    tiny_model: Path, tmp_path: Path, isolated_config: Path, processes, rpc_servers,
    llama_binaries,
) -> None:
    store = tmp_path / "store"
    (address, _proc), = rpc_servers(1)
    port = free_port()
    isolated_config.parent.mkdir(parents=True, exist_ok=True)
    isolated_config.write_text(tomli_w.dumps({
        "task_distribution_enabled": False, "model_sharding_enabled": True,
        "rpc_backends": [address], "ollama_models_dir": str(store), "gateway_port": port,
        "llama_cpp_dir": str(llama_binaries.llama_server.parent), "rpc_ctx_size": 256,
        "rpc_state_dir": str(tmp_path / "state")}))
    result = sollol("models", "import", str(tiny_model), NAME)
    assert result.exit_code == 0, result.output
    assert f"imported {LISTED}" in result.stdout
    manifest = store / "manifests" / "registry.ollama.ai" / "imported" / "tiny" / "latest"
    layers = json.loads(manifest.read_text())["layers"]
    blob = store / "blobs" / layers[0]["digest"].replace(":", "-")
    assert blob.read_bytes() == tiny_model.read_bytes()

    resolved = sollol("models", "resolve", NAME, "--json", "--verify")
    assert resolved.exit_code == 0, resolved.output
    assert json.loads(resolved.stdout)["path"] == str(blob)

    proc = processes.start("sollol-run", [sys.executable, "-m", "sollol", "run"],
                           env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/api/version", process=proc, timeout=60)
    (listed,) = [m for m in httpx.get(url + "/api/tags").json()["models"]
                 if m["name"] == LISTED]
    # finding 9: Ollama's details from the GGUF header, not only the format
    assert listed["details"]["family"] == "llama" and listed["details"]["parameter_size"]
    assert listed["details"]["quantization_level"]
    reply = httpx.post(url + "/api/generate", timeout=300, json={
        "model": NAME, "prompt": "hi", "stream": False, "options": {"num_predict": 2}})
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-sollol-route"] == "sharding"
    # loaded (asked for without a tag), the model keeps its one full name in the list
    loaded = [m for m in httpx.get(url + "/api/tags").json()["models"]
              if m["name"].startswith("imported/tiny")]
    assert [m["name"] for m in loaded] == [LISTED] and loaded[0]["details"] == listed["details"]


def test_import_refuses_what_it_cannot_store(tiny_model: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = sollol("models", "import", str(tiny_model), "tiny", "--store", str(store),
                   "--copy")
    assert first.exit_code == 0, first.output
    assert "copied" in first.stdout
    again = sollol("models", "import", str(tiny_model), "tiny", "--store", str(store))
    assert again.exit_code == 1 and "already in" in again.output and "--force" in again.output
    forced = sollol("models", "import", str(tiny_model), "tiny:latest", "--store", str(store),
                    "--force")
    assert forced.exit_code == 0, forced.output
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    bad = sollol("models", "import", str(text), "notes", "--store", str(store))
    assert bad.exit_code == 1 and "not a GGUF file" in bad.output
    name = sollol("models", "import", str(tiny_model), "no/such/deep/name", "--store",
                  str(store))
    assert name.exit_code == 2 and "is not a model name" in name.output
