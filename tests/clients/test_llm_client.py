"""simonw's `llm` CLI with the `llm-ollama` plugin (both from PyPI, in the test extra), pointed
at the gateway as an Ollama server with an access key: listing models with their capabilities,
a prompt, a prompt with a tool (`llm -T`), and `llm embed`."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from clients_support import CLIENT_KEY, ClientGateway, run_client

pytestmark = pytest.mark.llamacpp


def llm(gw: ClientGateway, home: Path, *args: str) -> str:
    exe = shutil.which("llm", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("the llm CLI is not installed: pip install -e '.[test]' (scripts/test does)")
    env = {**os.environ, "OLLAMA_HOST": gw.url, "OLLAMA_API_KEY": CLIENT_KEY,
           "LLM_USER_PATH": str(home)}
    code, out, err = run_client([exe, *args], env, timeout=300, cwd=home)
    assert code == 0, f"llm {' '.join(args)} failed ({code}): {out}\n{err}"
    return out


def test_llm_with_llm_ollama(client_gateway: ClientGateway, tmp_path: Path) -> None:
    gw, model = client_gateway, client_gateway.model
    plugins = json.loads(llm(gw, tmp_path, "plugins"))
    assert "llm-ollama" in [p["name"] for p in plugins]
    listed = llm(gw, tmp_path, "ollama", "models")
    row = next(line for line in listed.splitlines() if line.startswith(model))
    # the local cluster's first node chats, embeds and takes tools: llm-ollama must see it
    assert all(word in row for word in ("completion", "embedding", "tools")), listed
    chat_models = llm(gw, tmp_path, "models", "list")
    chat_id = next(word for line in chat_models.splitlines() if model in line
                   for word in line.split() if word.startswith(f"ollama/{model}"))
    embed_models = llm(gw, tmp_path, "embed-models", "list")
    embed_id = next(word for line in embed_models.splitlines() if model in line
                    for word in line.split() if word.startswith(f"ollama/{model}"))
    before = len(gw.events())
    llm(gw, tmp_path, "-m", chat_id, "-o", "num_predict", "8", "Say hello")  # (noise)
    llm(gw, tmp_path, "-m", chat_id, "-o", "num_predict", "8", "-T", "llm_version",
        "Which version of llm is this?")
    vector = json.loads(llm(gw, tmp_path, "embed", "-m", embed_id, "-c", "hello"))
    assert len(vector) > 0 and all(isinstance(x, float) for x in vector)
    events = gw.settled_events(before + 3)[before:]
    assert events and all(200 <= e["status"] < 300 for e in events), events
    chats = [e for e in events if e["endpoint"] == "chat"]
    assert len(chats) >= 2, events  # the prompt, and the prompt with a tool (not refused)
    assert [e for e in events if e["endpoint"] == "embed"], events
