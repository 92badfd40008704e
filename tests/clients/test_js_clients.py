"""The official OpenAI and Ollama JavaScript libraries (from the npm registry, run by Node.js)
against the gateway, with an access key: every call an application makes, streams, the
Responses stream helper's `finalResponse()` and aborts mid-stream; the gateway must have
recorded each request as a success, except the deliberate 404 and the aborted streams (499)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from clients_support import CLIENT_KEY, HERE, ClientGateway, npm_package, run_client

pytestmark = pytest.mark.llamacpp


def run_js(script: str, gw: ClientGateway, **extra: str) -> dict[str, Any]:
    env = {**os.environ, "SOLLOL_URL": gw.url, "SOLLOL_KEY": CLIENT_KEY, "MODEL": gw.model,
           "EMBED_MODEL": gw.embed_model, **extra}
    code, out, err = run_client(["node", str(HERE / script)], env, timeout=300)
    lines = out.strip().splitlines()
    result = json.loads(lines[-1]) if lines else {}
    assert code == 0, f"{script} failed at {result.get('failed')}: {result.get('error')}\n{err}"
    return result


def check_recorded(events: list[dict[str, Any]], aborted: int) -> None:
    """Every request a success, but the unknown model's 404 and `aborted` streams cut by the
    client (499, "client disconnected")."""
    statuses = [(e["endpoint"], e["status"]) for e in events]
    cut = [e for e in events if e["status"] == 499]
    assert len(cut) == aborted and all(e["error"] == "client disconnected" for e in cut), statuses
    refused = [e for e in events if e["status"] == 404]
    assert len(refused) == 1 and "no-such-model" in refused[0]["model"], statuses
    assert all(200 <= e["status"] < 300 for e in events if e not in cut + refused), statuses


@pytest.mark.parametrize("package", ["openai", "openai-6", "openai-4"])
def test_openai_js_library(client_gateway: ClientGateway, package: str) -> None:
    """The current major version and two older ones still in wide use (their Responses stream
    helpers read `response.created`'s `output`, which llama-server does not send)."""
    npm_package(package)
    before = len(client_gateway.events())
    result = run_js("openai_js.mjs", client_gateway, OPENAI_PACKAGE=package)
    assert client_gateway.model in result["list"]
    assert result["responses_stream_final"]["status"] in ("completed", "incomplete")
    assert "response.output_text.delta" in result["responses_stream_final"]["kinds"]
    assert result["unknown_model"]["status"] == 404
    assert result["embeddings"]["dims"] > 0 and result["chat_abort"]["chunks"] >= 2
    events = client_gateway.settled_events(before + 12)[before:]
    check_recorded(events, aborted=2)
    answered = ("chat/completions", "responses")
    streamed = [e for e in events if e["status"] == 200 and e["endpoint"] in answered]
    assert all(e["tokens"] for e in streamed), [(e["endpoint"], e["tokens"]) for e in streamed]


def test_ollama_js_library(client_gateway: ClientGateway) -> None:
    npm_package("ollama")
    before = len(client_gateway.events())
    result = run_js("ollama_js.mjs", client_gateway)
    assert result["chat_stream"]["eval_count"] > 0 and result["embed"]["count"] == 2
    assert result["unknown_model"]["status"] == 404
    events = client_gateway.settled_events(before + 9)[before:]
    check_recorded(events, aborted=1)
