"""The gateway in front of a real llama-server (the OpenAI-compatible backend): Ollama clients
are translated to it, OpenAI clients pass straight through."""

from __future__ import annotations

import ollama
import openai
import pytest

from sollol.testing.static_route import StaticRoute, Upstream

pytestmark = pytest.mark.llamacpp


@pytest.fixture
def gw(llama_server, tiny_model, gateway):
    url, _proc = llama_server(tiny_model)
    return gateway([StaticRoute("pool", [Upstream("llama", url, "openai", ("tiny",))])])


def test_ollama_chat_and_generate_through_a_real_llama_server(gw):
    client = ollama.Client(host=gw.url, timeout=120)
    messages = [{"role": "user", "content": "hello"}]
    options = {"temperature": 0, "num_predict": 8, "seed": 1}
    reply = client.chat(model="tiny", messages=messages, options=options)
    assert reply.done and reply.message.role == "assistant"
    assert reply.eval_count and reply.eval_count <= 8 and reply.prompt_eval_count
    streamed = list(client.chat(model="tiny", messages=messages, options=options, stream=True))
    assert streamed[-1].done and len(streamed) > 2
    assert "".join(p.message.content for p in streamed) == reply.message.content  # temp 0
    generated = client.generate(model="tiny", prompt="once", options=options)
    assert generated.done and generated.eval_count
    raw = client.generate(model="tiny", prompt="once", options=options, raw=True)
    assert raw.done and raw.done_reason in ("stop", "length")


def test_openai_client_passes_through_to_llama_server(gw):
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0, timeout=120)
    reply = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=6,
        temperature=0)
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 6
    chunks = list(client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=6,
        temperature=0, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content
