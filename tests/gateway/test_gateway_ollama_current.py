"""Current Ollama endpoints through the gateway with the official `ollama` client: `create` from
a local GGUF (blobs uploaded once, sent on to the nodes that lack them), `push` fanned out like
pull, `/api/status`, `HEAD /api/tags`; and the v0.33 fields passed untouched to Ollama nodes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import ollama
import pytest

from sollol.testing.emulator import EmulatedModel

AS_OLLAMA = {"Content-Type": "application/json"}
"""What Ollama's clients send on every request, blob uploads included (the gateway refuses a
change without it or `X-Requested-With`: cross-site request forgery)."""


@pytest.fixture
def two_nodes(emulator, pool_gateway):
    first = emulator(models=["base:1b"], name="first")
    second = emulator(models=["base:1b"], name="second")
    return first, second, pool_gateway(first.address, second.address)


def _blob_requests(node, digest: str) -> int:
    return node.stats()["requests"].get(f"/api/blobs/{digest}", 0)


def test_create_from_a_local_gguf_sends_the_blob_where_it_is_missing(
    two_nodes, tiny_model: Path,
) -> None:
    first, second, gw = two_nodes
    digest = "sha256:" + hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    # the second node already holds the blob: it must not get it again
    assert httpx.post(f"{second.url}/api/blobs/{digest}",
                      content=tiny_model.read_bytes()).status_code == 201
    assert httpx.head(f"{gw.url}/api/blobs/{digest}").status_code == 404
    client = ollama.Client(host=gw.url, timeout=60)
    assert client.create_blob(tiny_model) == digest
    assert httpx.head(f"{gw.url}/api/blobs/{digest}").status_code == 200
    done = client.create(model="mine", files={"tiny.gguf": digest})
    assert done.status == "success"
    parts = list(client.create(model="mine2", files={"tiny.gguf": digest}, stream=True))
    assert parts[-1].status == "success"
    for node in (first, second):
        names = [m["name"] for m in httpx.get(node.url + "/api/tags").json()["models"]]
        assert {"mine:latest", "mine2:latest"} <= set(names), node.name
    assert httpx.head(f"{first.url}/api/blobs/{digest}").status_code == 200
    # first: HEAD (404) and POST for the first create, HEAD (200) for the second, ours now
    assert _blob_requests(first, digest) == 4
    # second: the test's own POST, then one HEAD per create and never a second upload
    assert _blob_requests(second, digest) == 3


def test_blob_uploads_are_verified(two_nodes) -> None:
    _first, _second, gw = two_nodes
    wrong = "sha256:" + "0" * 64
    reply = httpx.post(f"{gw.url}/api/blobs/{wrong}", content=b"not those bytes",
                       headers=AS_OLLAMA)
    assert reply.status_code == 400 and "digest mismatch" in reply.json()["error"]
    assert httpx.head(f"{gw.url}/api/blobs/{wrong}").status_code == 404
    bad = httpx.post(f"{gw.url}/api/blobs/sha256:..%2F..%2Fetc", content=b"x",
                     headers=AS_OLLAMA)
    assert bad.status_code == 400 and "invalid digest" in bad.json()["error"]
    assert httpx.get(f"{gw.url}/api/blobs/{wrong}").status_code == 405


def test_push_is_fanned_out_like_pull(two_nodes) -> None:
    first, second, gw = two_nodes
    client = ollama.Client(host=gw.url, timeout=60)
    assert client.push("base:1b").status == "success"
    streamed = list(client.push("base:1b", stream=True))
    assert streamed[-1].status == "success"
    assert {p.status for p in streamed} >= {"retrieving manifest", "pushing manifest"}
    assert first.stats()["pushed"] == second.stats()["pushed"] == ["base:1b", "base:1b"]
    with pytest.raises(ollama.ResponseError) as missing:
        client.push("missing")
    assert "not found" in missing.value.error


def test_status_and_head_tags(two_nodes) -> None:
    _first, _second, gw = two_nodes
    status = httpx.get(gw.url + "/api/status").json()
    assert status["status"] == "ok" and status["routes"]["pool"]["healthy"] == 2
    head = httpx.head(gw.url + "/api/tags")
    assert head.status_code == 200 and head.content == b""
    assert httpx.get(gw.url + "/v1/models/base:1b").json()["id"] == "base:1b"


def test_current_fields_pass_untouched_to_ollama_nodes(emulator, pool_gateway) -> None:
    node = emulator(models=[EmulatedModel("think:1b",
                                          capabilities=("completion", "tools", "thinking"))])
    gw = pool_gateway(node.address)
    client = ollama.Client(host=gw.url, timeout=60)
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": "", "thinking": "hmm",
                 "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]},
                {"role": "tool", "content": "42", "tool_name": "f"}]
    body = {"model": "think:1b", "messages": messages, "stream": False, "think": "high",
            "logprobs": True, "top_logprobs": 2, "truncate": False, "shift": False}
    reply = httpx.post(gw.url + "/api/chat", json=body, timeout=60).json()
    assert node.stats()["recent"][-1] == body  # byte-for-byte the client's request
    assert reply["message"]["thinking"] and reply["done_reason"] in ("stop", "length")
    assert reply["logprobs"] and len(reply["logprobs"][0]["top_logprobs"]) == 2
    streamed = list(client.generate(model="think:1b", prompt="hi", think=True, stream=True,
                                    logprobs=True))
    assert any(p.thinking for p in streamed) and streamed[-1].done_reason
    bad = httpx.post(gw.url + "/api/chat", json={**body, "think": "extreme"})
    assert bad.status_code == 400 and "think" in bad.json()["error"]


def test_blob_uploads_are_bounded_and_kept_out_of_tmp(emulator, pool_gateway, tmp_path) -> None:
    node = emulator(models=["base:1b"])
    spool = tmp_path / "spool"
    gw = pool_gateway(node.address, blob_dir=str(spool), max_blob_bytes=1000)
    data = b"x" * 600
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert httpx.post(f"{gw.url}/api/blobs/{digest}", content=data,
                      headers=AS_OLLAMA).status_code == 201
    (run,) = spool.iterdir()  # this gateway run's own folder
    assert (run / digest.replace(":", "-")).read_bytes() == data
    big = httpx.post(f"{gw.url}/api/blobs/sha256:{'1' * 64}", content=b"y" * 1001,
                     headers=AS_OLLAMA)
    assert big.status_code == 413 and "max_blob_bytes" in big.json()["error"]

    def chunked():  # no Content-Length: the limit is enforced while the bytes arrive
        yield b"z" * 700
        yield b"z" * 700
    cut = httpx.post(f"{gw.url}/api/blobs/sha256:{'2' * 64}", content=chunked(),
                     headers=AS_OLLAMA)
    assert cut.status_code == 413
    assert sorted(p.name for p in run.iterdir()) == [digest.replace(":", "-")]
    gw.stop()
    assert not run.exists()  # the spool goes when the gateway stops


def test_the_emulator_answers_current_ollama_endpoints(emulator) -> None:
    node = emulator(models=["base:1b"])
    assert httpx.get(node.url + "/api/status").json()["status"] == "ok"
    assert httpx.head(node.url + "/api/tags").status_code == 200
    listed = httpx.get(node.url + "/v1/models").json()
    assert [m["id"] for m in listed["data"]] == ["base:1b"]
    assert httpx.get(node.url + "/v1/models/base:1b").json()["object"] == "model"
    missing = httpx.get(node.url + "/v1/models/nope")
    assert missing.status_code == 404 and "not found" in missing.json()["error"]["message"]
    pushed = httpx.post(node.url + "/api/push", json={"model": "base:1b", "stream": False})
    assert pushed.json() == {"status": "success"}
    bad = httpx.post(node.url + "/api/generate", json={"model": "base:1b", "prompt": "x",
                                                      "top_logprobs": 21})
    assert bad.status_code == 400 and "top_logprobs" in bad.json()["error"]
