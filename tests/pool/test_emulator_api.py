"""The Ollama-API emulator, driven by the official `ollama` client and raw HTTP."""

from __future__ import annotations

import hashlib
import json
import math

import httpx
import ollama
import pytest

from sollol.testing.emulator import EmulatedModel

TIMING = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
          "eval_count", "eval_duration")


@pytest.fixture
def node(emulator):
    return emulator(models=[
        "llama3.2:1b",
        EmulatedModel("cold:7b", loaded=False, load_seconds=0.2, parameter_count=7_000_000_000),
        EmulatedModel("nomic-embed-text", capabilities=("embedding",), embedding_length=32),
        EmulatedModel("thinker", capabilities=("completion", "thinking")),
    ], tokens_per_second=0)


@pytest.fixture
def client(node):
    return ollama.Client(node.url, timeout=30)


def test_root_version_and_head(node):
    assert httpx.get(node.url).text == "Ollama is running"
    assert httpx.head(node.url).status_code == 200
    assert httpx.get(node.url + "/api/version").json() == {"version": "0.33.0"}


def test_tags_ps_and_show(client):
    names = {m.model for m in client.list().models}
    assert names == {"llama3.2:1b", "cold:7b", "nomic-embed-text:latest", "thinker:latest"}
    running = {m.model for m in client.ps().models}
    assert "cold:7b" not in running and "llama3.2:1b" in running
    shown = client.show("cold:7b")
    assert shown.details.parameter_size == "7.0B"
    assert shown.modelinfo["general.parameter_count"] == 7_000_000_000
    assert shown.modelinfo["llama.context_length"] == 4096


def test_generate_streams_ndjson_with_timing_fields(client):
    parts = list(client.generate(model="llama3.2:1b", prompt="why is the sky blue?", stream=True))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    final = parts[-1]
    assert final.done_reason == "stop" and final.response == ""
    for field in TIMING:
        assert isinstance(getattr(final, field), int) and getattr(final, field) >= 0
    assert final.eval_count == len(parts) - 1 == 12
    text = "".join(p.response for p in parts)
    whole = client.generate(model="llama3.2:1b", prompt="why is the sky blue?")
    assert whole.response == text  # deterministic: same model and prompt, same words
    assert whole.model == "llama3.2:1b"


def test_names_without_tag_mean_latest(client):
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model="llama3.2:latest", prompt="x")
    assert err.value.status_code == 404
    assert client.generate(model="thinker", prompt="x").model == "thinker:latest"


def test_num_predict_stops_with_length(client):
    reply = client.generate(model="llama3.2:1b", prompt="x", options={"num_predict": 3})
    assert reply.done_reason == "length" and reply.eval_count == 3


def test_raw_ndjson_wire_format(node):
    body = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", node.url + "/api/chat", json=body) as response:
        assert response.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert lines[0]["message"]["role"] == "assistant" and lines[0]["done"] is False
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "stop"
    assert lines[-1]["eval_duration"] > 0


def test_chat_tools_format_and_thinking(client):
    tool = {"type": "function", "function": {"name": "weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}
    reply = client.chat(model="llama3.2:1b", messages=[{"role": "user", "content": "paris?"}],
                        tools=[tool])
    call = reply.message.tool_calls[0]
    assert call.function.name == "weather" and isinstance(call.function.arguments["city"], str)
    schema = {"type": "object", "properties": {"age": {"type": "integer"},
                                               "ok": {"type": "boolean"}}}
    data = json.loads(client.chat(model="llama3.2:1b", format=schema,
                                  messages=[{"role": "user", "content": "x"}]).message.content)
    assert isinstance(data["age"], int) and data["ok"] is True
    thought = client.chat(model="thinker", think=True, messages=[{"role": "user", "content": "x"}])
    assert thought.message.thinking
    with pytest.raises(ollama.ResponseError, match="does not support thinking"):
        client.chat(model="llama3.2:1b", think=True, messages=[{"role": "user", "content": "x"}])


def test_embed_and_legacy_embeddings(client):
    result = client.embed(model="nomic-embed-text", input=["a", "b"])
    assert len(result.embeddings) == 2 and len(result.embeddings[0]) == 32
    assert math.isclose(sum(v * v for v in result.embeddings[0]), 1.0, rel_tol=1e-6)
    assert result.embeddings[0] != result.embeddings[1]
    assert client.embed(model="nomic-embed-text", input="a").embeddings[0] == result.embeddings[0]
    legacy = client.embeddings(model="nomic-embed-text", prompt="a")
    assert len(legacy.embedding) == 32


def test_cold_model_loads_then_shows_in_ps(client):
    reply = client.generate(model="cold:7b", prompt="x")
    assert reply.load_duration >= 0.2e9
    assert "cold:7b" in {m.model for m in client.ps().models}
    again = client.generate(model="cold:7b", prompt="x")
    assert again.load_duration < 0.2e9
    unloaded = client.generate(model="cold:7b", prompt="", keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert "cold:7b" not in {m.model for m in client.ps().models}
    loaded = client.chat(model="cold:7b", messages=[])
    assert loaded.done_reason == "load"


def test_keep_alive_zero_unloads_after_an_embedding_too(client):
    client.embed(model="cold:7b", input="x", keep_alive=0)
    assert "cold:7b" not in {m.model for m in client.ps().models}
    client.embed(model="cold:7b", input="x")
    assert "cold:7b" in {m.model for m in client.ps().models}


def test_errors_are_ollama_shaped(node, client):
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="missing", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 404 and err.value.error == "model 'missing' not found"
    bad = httpx.post(node.url + "/api/generate", content=b"{nope")
    assert bad.status_code == 400 and "invalid JSON" in bad.json()["error"]
    assert httpx.post(node.url + "/api/generate", json={}).json() == {"error": "model is required"}
    assert httpx.get(node.url + "/api/nothing").status_code == 404
    assert httpx.get(node.url + "/api/generate").status_code == 405
    bad_keep = httpx.post(node.url + "/api/generate",
                          json={"model": "llama3.2:1b", "keep_alive": "soon"})
    assert bad_keep.status_code == 400


def test_model_management(node, client):
    progress = list(client.pull("tinyllama", stream=True))
    assert progress[0].status == "pulling manifest" and progress[-1].status == "success"
    assert any(p.total and p.completed == p.total for p in progress)
    assert client.copy("tinyllama", "tiny-copy").status == "success"
    assert "tiny-copy:latest" in {m.model for m in client.list().models}
    assert client.delete("tiny-copy").status == "success"
    with pytest.raises(ollama.ResponseError) as err:
        client.delete("tiny-copy")
    assert err.value.status_code == 404
    created = client.create(model="mario", from_="llama3.2:1b", system="You are Mario")
    assert created.status == "success"
    assert client.show("mario").modelfile.count("You are Mario") == 1
    with pytest.raises(ollama.ResponseError, match="not found"):
        client.create(model="x", from_="absent")


def test_blobs_and_create_from_files(node, client, tmp_path):
    blob = tmp_path / "weights.gguf"
    blob.write_bytes(b"GGUF" + bytes(100))
    digest = client.create_blob(blob)
    assert digest == "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    assert httpx.head(f"{node.url}/api/blobs/{digest}").status_code == 200
    assert httpx.head(f"{node.url}/api/blobs/sha256:{'0' * 64}").status_code == 404
    wrong = httpx.post(f"{node.url}/api/blobs/sha256:{'0' * 64}", content=b"abc")
    assert wrong.status_code == 400
    assert client.create(model="mine", files={"weights.gguf": digest}).status == "success"
    assert client.show("mine").details.format == "gguf"


def test_library_limits_pull(emulator):
    node = emulator(models=["a"], library=["b"])
    client = ollama.Client(node.url, timeout=30)
    assert client.pull("b").status == "success"
    with pytest.raises(ollama.ResponseError, match="file does not exist"):
        list(client.pull("c", stream=True))
    with pytest.raises(ollama.ResponseError):
        client.pull("c")


def test_max_loaded_evicts_least_recent(emulator):
    node = emulator(models=[EmulatedModel(n, loaded=False, load_seconds=0) for n in "abc"],
                    max_loaded=2)
    client = ollama.Client(node.url, timeout=30)
    for name in "abc":
        client.generate(model=name, prompt="x")
    assert node.loaded_models() == ["b:latest", "c:latest"]
