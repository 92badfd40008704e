"""Acceptance: the official `ollama` and `openai` clients against the gateway, on both kinds of
backend (an emulated Ollama node and an OpenAI-compatible scripted node), so every endpoint is
exercised with and without translation."""

from __future__ import annotations

import math

import httpx
import ollama
import openai
import pytest

from sollol.testing.static_route import StaticRoute, Upstream


def _unit(vector):
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector]


WORDS = ("Hello", " from", " a", " scripted", " node")


@pytest.fixture
def scripted(scripted_node):
    return scripted_node(api="openai")


@pytest.fixture
def gw(emulator, scripted, gateway):
    node = emulator(models=["tiny:1b", "embedder"], name="emu")
    route = StaticRoute("pool", [Upstream("emu", node.url, "ollama", ("tiny:1b", "embedder")),
                                 Upstream("oai", scripted.url, "openai", ("oai-model",))])
    return gateway([route])


@pytest.fixture
def oclient(gw):
    return ollama.Client(host=gw.url, timeout=30)


@pytest.fixture
def aclient(gw):
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def test_root_version_list_and_ps(gw, oclient):
    assert httpx.get(gw.url).text == "Ollama is running"
    assert httpx.head(gw.url).status_code == 200
    assert "version" in httpx.get(gw.url + "/api/version").json()
    names = [m.model for m in oclient.list().models]
    assert names == ["tiny:1b", "embedder:latest", "oai-model:latest"]
    assert oclient.ps().models == []


def test_show_on_both_backends(oclient):
    shown = oclient.show("tiny:1b")
    assert shown.details is not None and shown.modelinfo
    synthesized = oclient.show("oai-model")  # answered from metadata: no /api/show upstream
    assert synthesized.details is not None and synthesized.details.format == "gguf"


@pytest.mark.parametrize("model", ["tiny:1b", "oai-model"])
def test_ollama_generate_and_chat(oclient, model):
    reply = oclient.generate(model=model, prompt="hi", stream=False)
    assert reply.done and reply.response and reply.eval_count
    parts = list(oclient.generate(model=model, prompt="hi", stream=True))
    assert parts[-1].done and "".join(p.response for p in parts) == reply.response
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    chat = oclient.chat(model=model, messages=messages)
    assert chat.message.role == "assistant" and chat.message.content
    streamed = list(oclient.chat(model=model, messages=messages, stream=True))
    assert len(streamed) > 2 and streamed[-1].done
    assert "".join(p.message.content for p in streamed) == chat.message.content
    if model == "oai-model":
        assert chat.message.content == "".join(WORDS)


def test_load_requests_are_answered_without_generating(oclient, scripted):
    loaded = oclient.generate(model="oai-model")
    assert loaded.done and loaded.done_reason == "load" and loaded.response == ""
    chat = oclient.chat(model="oai-model", messages=[])
    assert chat.done_reason == "load"
    assert not scripted.requests  # nothing was generated upstream


@pytest.mark.parametrize("model", ["embedder", "oai-model"])
def test_ollama_embed(oclient, model):
    reply = oclient.embed(model=model, input=["one", "two"])
    assert len(reply.embeddings) == 2 and all(len(v) > 1 for v in reply.embeddings)
    legacy = oclient.embeddings(model=model, prompt="one")
    # Ollama's legacy endpoint does not normalise; /api/embed does: compare directions.
    assert _unit(legacy.embedding) == pytest.approx(_unit(reply.embeddings[0]), rel=1e-4)


@pytest.mark.parametrize("model", ["tiny:1b", "oai-model"])
def test_openai_chat_and_completions(aclient, model):
    messages = [{"role": "user", "content": "hi"}]
    reply = aclient.chat.completions.create(model=model, messages=messages)
    text = reply.choices[0].message.content
    assert text and reply.choices[0].finish_reason == "stop" and reply.usage.completion_tokens
    chunks = list(aclient.chat.completions.create(
        model=model, messages=messages, stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    completion = aclient.completions.create(model=model, prompt="once upon")
    assert completion.choices[0].text
    pieces = list(aclient.completions.create(model=model, prompt="once upon", stream=True))
    assert "".join(p.choices[0].text for p in pieces if p.choices) == completion.choices[0].text


@pytest.mark.parametrize("model", ["embedder", "oai-model"])
def test_openai_embeddings_and_models(aclient, model):
    # The client asks for base64 by default and decodes it: both encodings must work.
    vectors = aclient.embeddings.create(model=model, input=["a", "bb"]).data
    floats = aclient.embeddings.create(model=model, input=["a", "bb"],
                                       encoding_format="float").data
    assert [d.index for d in vectors] == [0, 1]
    assert vectors[1].embedding == pytest.approx(floats[1].embedding, rel=1e-5)
    assert {m.id for m in aclient.models.list()} == {"tiny:1b", "embedder:latest",
                                                     "oai-model:latest"}


def test_retrieve_one_model_and_show_by_legacy_name(gw, aclient):
    assert aclient.models.retrieve("tiny:1b").id == "tiny:1b"
    assert aclient.models.retrieve("embedder").id == "embedder:latest"
    with pytest.raises(openai.NotFoundError):
        aclient.models.retrieve("missing")
    shown = httpx.post(gw.url + "/api/show", json={"name": "tiny:1b"}, timeout=30)
    assert shown.status_code == 200 and shown.json()["details"]


def test_unknown_model_raises_each_clients_own_error(oclient, aclient):
    with pytest.raises(ollama.ResponseError) as caught:
        oclient.chat(model="missing", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 404 and "'missing' not found" in caught.value.error
    with pytest.raises(ollama.ResponseError) as caught:
        oclient.generate(model="missing", prompt="x")
    assert caught.value.status_code == 404
    with pytest.raises(openai.NotFoundError) as missing:
        aclient.chat.completions.create(model="missing",
                                        messages=[{"role": "user", "content": "x"}])
    assert "'missing' not found" in missing.value.message
    assert missing.value.code == "model_not_found"


def test_bad_input_raises_the_clients_errors(oclient, aclient):
    with pytest.raises(openai.BadRequestError) as bad:
        aclient.chat.completions.create(model="tiny:1b", messages="hi")  # type: ignore[arg-type]
    assert "messages" in bad.value.message
    with pytest.raises(ollama.ResponseError) as caught:
        oclient.generate(model="tiny:1b", prompt="x", options={"stop": "not-a-list"})
    assert caught.value.status_code == 400 and "options.stop" in caught.value.error


def test_head_is_answered_wherever_get_is(gw):
    # Ollama answers HEAD on /, /api/version and /api/tags (clients use it as a liveness probe).
    for path in ("/", "/api/version", "/api/tags", "/v1/models"):
        reply = httpx.head(gw.url + path)
        assert reply.status_code == 200 and reply.content == b"", path
        assert int(reply.headers["content-length"]) > 0, path
    assert httpx.head(gw.url + "/api/chat").status_code == 405
