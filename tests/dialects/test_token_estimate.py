"""The count_tokens estimate (for nodes with no tokenizer endpoint) and Ollama's capability
words: pure functions, checked on their rules and on odd request bodies."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sollol.core.capabilities import cluster_words, ollama_words
from sollol.dialects.anthropic import anthropic_to_ollama
from sollol.dialects.requests import ollama_to_openai
from sollol.dialects.token_estimate import CHARS_PER_TOKEN, PER_MESSAGE, PRIMING, estimate
from sollol.errors import RequestError
from sollol.forwarding.validate import validate
from sollol.models import Backend, BackendState, RouteState


def test_the_estimate_counts_characters_messages_and_tools():
    chat = {"messages": [{"role": "system", "content": "x" * 40},
                         {"role": "user", "content": "y" * 80}]}
    assert estimate(chat) == 120 / CHARS_PER_TOKEN + 2 * PER_MESSAGE + PRIMING
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    assert estimate({**chat, "tools": tools}) > estimate(chat)
    assert estimate({"messages": []}) == PRIMING


_TEXT = st.text(max_size=20)
_BLOCK = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": _TEXT}),
    st.fixed_dictionaries({"type": st.just("tool_use"), "id": _TEXT, "name": _TEXT,
                           "input": st.dictionaries(_TEXT, _TEXT, max_size=2)}),
    st.fixed_dictionaries({"type": st.just("tool_result"), "tool_use_id": _TEXT,
                           "content": st.one_of(_TEXT, st.just([]))}),
    st.dictionaries(st.sampled_from(["type", "text", "source", "id"]),
                    st.one_of(st.none(), _TEXT, st.integers()), max_size=3))
_MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "x"]),
                                  "content": st.one_of(_TEXT, st.lists(_BLOCK, max_size=3),
                                                       st.none(), st.integers())})


@settings(max_examples=300, deadline=None)
@given(st.lists(_MESSAGE, max_size=4), st.one_of(st.none(), _TEXT),
       st.one_of(st.none(), st.lists(st.dictionaries(
           st.sampled_from(["name", "description", "input_schema"]),
           st.one_of(_TEXT, st.dictionaries(_TEXT, _TEXT, max_size=2)), max_size=3),
           max_size=2)))
def test_any_accepted_count_request_is_counted_or_refused(messages: list[Any],
                                                          system: str | None,
                                                          tools: list[Any] | None):
    """What the gateway does with a count_tokens body on a node without the endpoint: a
    RequestError (a 400) or a count, never a crash (a 500)."""
    body: dict[str, Any] = {"model": "m", "messages": messages}
    if system is not None:
        body["system"] = system
    if tools is not None:
        body["tools"] = tools
    try:
        call = validate("anthropic", "count_tokens", json.dumps(body).encode())
        chat = anthropic_to_ollama({**call.body, "max_tokens": 1})
        ollama_to_openai("chat", {**chat, "stream": False})
    except RequestError:
        return
    assert estimate(chat) >= PRIMING


def _state(server: str, caps: dict[str, frozenset[str]], lacks=None, healthy=True,
           models=("m", "m:latest")) -> BackendState:
    return BackendState(Backend(server + "-node", "ollama", "h:1"), healthy=healthy,
                        models=frozenset(models), capabilities=caps, lacks=lacks or {},
                        server=server)


def test_capability_words_are_merged_over_the_healthy_holders():
    ollama = _state("ollama", {"m:latest": frozenset({"completion", "chat", "embedding",
                                                      "thinking"})})
    llama = _state("llama-server", {"": frozenset({"completion", "chat", "tools", "embedding"})},
                   lacks={"": frozenset({"tools"})})
    down = _state("llama-server", {"": frozenset({"vision"})}, healthy=False)
    other = _state("llama-server", {"": frozenset({"vision"})}, models=("n",))
    states = [RouteState("pool", (ollama, llama, down, other))]
    # Ollama's "completion" model is not called "embedding"; the llama-server one embeds;
    # "tools" it answered it lacks, the node that is down and the one without m count for nothing
    assert cluster_words(states, "m") == ["completion", "embedding", "thinking"]
    assert cluster_words(states, "absent") is None
    assert ollama_words(frozenset({"completion", "chat", "embedding"}), "ollama") == {
        "completion"}
    assert ollama_words(frozenset({"embedding"}), "ollama") == {"embedding"}
