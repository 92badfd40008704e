"""`/api/show` and `/api/tags` through the gateway say what the cluster knows of a model across
the nodes that hold it (issue 26): real llama-server nodes and emulated Ollama nodes, read with
the official `ollama` client."""

from __future__ import annotations

import re
import time

import httpx
import ollama
import pytest

from sollol.testing.emulator_models import EmulatedModel
from sollol.testing.tiny_models import TinyModelSpec, make_tiny_model

pytestmark = [pytest.mark.llamacpp, pytest.mark.slow]
HEX64 = re.compile(r"[0-9a-f]{64}")


def wait_learned(url: str, count: int, limit: float = 60.0) -> list[dict]:
    """The pool's nodes once `count` of them are healthy with their capabilities learned."""
    deadline = time.monotonic() + limit
    while True:
        nodes = httpx.get(url + "/sollol/nodes", timeout=10).json()["nodes"]
        ready = [n for n in nodes if n["health"] == "healthy" and n["capabilities"]]
        if len(ready) >= count:
            return nodes
        assert time.monotonic() < deadline, f"capabilities never learned: {nodes}"
        time.sleep(0.2)


def test_llama_server_capabilities_and_digests(llama_server, tiny_model, ollama_store,
                                               tmp_path, pool_gateway):
    # "tiny" on two nodes, only one of which embeds: the cluster can embed with "tiny"
    embeds, _ = llama_server(tiny_model, "--alias", "tiny", "--embeddings", "--pooling", "mean")
    plain, _ = llama_server(tiny_model, "--alias", "tiny")
    other = make_tiny_model(tmp_path / "other.gguf", spec=TinyModelSpec(seed=1))
    other_url, _ = llama_server(other, "--alias", "other")
    layer = ollama_store.blob_file(tiny_model, "application/vnd.ollama.image.model")
    blob = ollama_store.root / "blobs" / layer.digest.replace(":", "-")
    blob_url, _ = llama_server(blob, "--alias", "stored")
    gw = pool_gateway(*(f"openai://{u.removeprefix('http://')}"
                        for u in (embeds, plain, other_url, blob_url)), health_interval=0.5)
    wait_learned(gw.url, 4)
    client = ollama.Client(gw.url, timeout=60)
    shown = client.show("tiny")
    assert shown.capabilities == ["completion", "tools", "embedding"]
    assert client.show("other").capabilities == ["completion", "tools"]  # no --embeddings
    listed = {m.model: m for m in client.list().models}
    assert set(listed) == {"tiny", "other", "stored"}
    raw = {m["name"]: m for m in httpx.get(gw.url + "/api/tags").json()["models"]}
    assert raw["tiny"]["capabilities"] == ["completion", "tools", "embedding"]
    digests = {name: m.digest for name, m in listed.items()}
    assert all(HEX64.fullmatch(d or "") for d in digests.values()), digests
    assert len(set(digests.values())) == 3  # never shared by two models
    # a model served from Ollama's store: its weights blob's own content digest
    assert digests["stored"] == blob.name.removeprefix("sha256-")
    # stable: the same on the next listing (a cache key) and whichever node answers first
    again = {m.model: m.digest for m in client.list().models}
    assert again == digests
    assert listed["tiny"].details.quantization_level == "F16"
    # /api/show's details agree with the listing's (from /props and the GGUF header)
    assert shown.details.quantization_level == "F16"
    assert shown.details.family == listed["tiny"].details.family == "llama"


def test_ollama_and_llama_server_nodes_merge(emulator, llama_server, tiny_model, pool_gateway):
    # an Ollama node says "completion" and "vision" for m; a llama-server with --embeddings
    # serves the same name: the merge is what either can do, in Ollama's words
    node = emulator(models=[EmulatedModel("m", capabilities=("completion", "vision"))])
    server, _ = llama_server(tiny_model, "--alias", "m", "--embeddings", "--pooling", "mean")
    gw = pool_gateway(node.address, "openai://" + server.removeprefix("http://"),
                      health_interval=0.5)
    wait_learned(gw.url, 2)
    client = ollama.Client(gw.url, timeout=60)
    for _ in range(4):  # whichever node answers /api/show, the answer is the cluster's
        assert client.show("m").capabilities == ["completion", "tools", "vision", "embedding"]
    # an Ollama model's own words pass through; a "completion" model is not called
    # "embedding" (Ollama embeds with it, but does not list it as an embedding model)
    only = emulator(models=[EmulatedModel("chat-only",
                                        capabilities=("completion", "thinking"))])
    gw2 = pool_gateway(only.address, health_interval=0.5)
    wait_learned(gw2.url, 1)
    assert ollama.Client(gw2.url).show("chat-only").capabilities == ["completion", "thinking"]
    tags = httpx.get(gw2.url + "/api/tags").json()["models"]
    assert tags[0]["capabilities"] == ["completion", "thinking"]
    assert tags[0]["digest"] == httpx.get(only.url + "/api/tags").json()["models"][0]["digest"]
