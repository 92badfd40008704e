"""Anthropic's `POST /v1/messages/count_tokens` through the gateway (issue 26), with the official
`anthropic` client: counted by a real llama-server's own tokenizer (its endpoint, or its
`/apply-template` and `/tokenize` where the endpoint is missing), estimated on Ollama nodes, and
each answer says which."""

from __future__ import annotations

import time

import anthropic
import httpx
import pytest

from sollol.dialects.anthropic import anthropic_to_ollama
from sollol.dialects.token_estimate import estimate
from sollol.testing.counting_proxy import CountingProxy

SYSTEM = "You are brief."
MESSAGES = [{"role": "user", "content": "What is the weather in Paris today?"},
            {"role": "assistant", "content": "Let me look."},
            {"role": "user", "content": "Please hurry."}]
TOOLS = [{"name": "get_weather", "description": "Get the weather for a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}}]


def client(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key="x", max_retries=0, timeout=60)


def ready(url: str) -> None:
    deadline = time.monotonic() + 60
    while not httpx.get(url + "/api/tags").json()["models"]:
        assert time.monotonic() < deadline, "the node never became healthy"
        time.sleep(0.05)


def counted(url: str, **extra) -> anthropic.types.MessageTokensCount:
    return client(url).messages.count_tokens(model="tiny", system=SYSTEM, messages=MESSAGES,
                                             tools=TOOLS, **extra)


def read_by_messages(url: str) -> int:
    """The prompt tokens the node's `/v1/messages` reports for the same request."""
    usage = client(url).messages.create(model="tiny", max_tokens=1, system=SYSTEM,
                                        messages=MESSAGES, tools=TOOLS).usage
    return usage.input_tokens + (usage.cache_read_input_tokens or 0)


@pytest.mark.llamacpp
@pytest.mark.slow
@pytest.mark.parametrize("missing", [False, True], ids=["own-endpoint", "apply-template"])
def test_llama_server_counts_with_its_own_tokenizer(llama_server, tiny_model, pool_gateway,
                                                   missing):
    url, _ = llama_server(tiny_model, "--alias", "tiny")
    # an older llama-server has no count_tokens endpoint: the gateway asks its template and
    # tokenizer instead (same node, the endpoint hidden by a proxy)
    hidden = frozenset({"/v1/messages/count_tokens"} if missing else ())
    with CountingProxy(url, hide=hidden) as proxy:
        gw = pool_gateway("openai://" + proxy.address, health_interval=0.5)
        ready(gw.url)
        answer = counted(gw.url)
        assert answer.input_tokens == read_by_messages(gw.url)  # exact: what it then reads
        assert answer.model_extra["exact"] is True
        assert answer.model_extra["method"].startswith("tokenizer")
        asked = proxy.counts()
        if missing:
            assert asked["POST /apply-template"] == 1 and asked["POST /tokenize"] == 1
        else:
            assert "POST /apply-template" not in asked
        # more text, more tokens; a bad request is the client's error, in Anthropic's shape
        longer = client(gw.url).messages.count_tokens(
            model="tiny", messages=[*MESSAGES, {"role": "user", "content": "And tomorrow?"}])
        shorter = client(gw.url).messages.count_tokens(model="tiny", messages=MESSAGES)
        assert longer.input_tokens > shorter.input_tokens
        with pytest.raises(anthropic.BadRequestError):
            client(gw.url).messages.count_tokens(model="tiny", messages="not a list")
        with pytest.raises(anthropic.NotFoundError):
            client(gw.url).messages.count_tokens(model="absent", messages=MESSAGES)


def test_ollama_nodes_get_an_estimate_that_says_so(emulator, pool_gateway):
    node = emulator(models=["tiny"])
    gw = pool_gateway(node.address, health_interval=0.5)
    ready(gw.url)
    answer = counted(gw.url)
    assert answer.model_extra["exact"] is False
    assert answer.model_extra["method"].startswith("estimate")
    chat = anthropic_to_ollama({"model": "tiny", "max_tokens": 1, "system": SYSTEM,
                                "messages": MESSAGES, "tools": TOOLS})
    assert answer.input_tokens == estimate(chat)
    # nothing was generated for it, and the request is logged by its own name
    events = httpx.get(gw.url + "/sollol/events").json()["events"]
    assert [(e["api"], e["endpoint"], e["status"]) for e in events] == [
        ("anthropic", "messages/count_tokens", 200)]
    assert node.app.stats.tokens == 0 and not {"/api/chat", "/api/generate"} & set(
        node.app.stats.requests)
