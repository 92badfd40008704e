"""OpenAI streams count their tokens whatever the client asked (issue 28, finding 9): the
gateway asks an OpenAI-compatible server for the usage chunk and hides it from a client that
did not ask for it."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from sollol.dialects.usage_tap import HiddenUsage, ask_for_usage
from sollol.testing.static_route import StaticRoute, Upstream

CONTENT = (b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
           b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":7}}\n\n'
DONE = b"data: [DONE]\n\n"


@pytest.mark.parametrize("size", [1, 2, 7, 40, 1000])
def test_the_usage_chunk_is_taken_out_however_the_bytes_arrive(size: int) -> None:
    stream, upstream = HiddenUsage(), CONTENT + USAGE + DONE
    out = b"".join(stream.feed(upstream[i:i + size]) for i in range(0, len(upstream), size))
    out += stream.finish()
    assert out == CONTENT + DONE
    assert stream.complete and (stream.tokens, stream.prompt_tokens) == (7, 3)


def test_only_a_stream_that_lacks_usage_is_asked_for_it() -> None:
    body = {"model": "m", "stream": True, "messages": []}
    asked = json.loads(ask_for_usage("chat", body) or b"{}")
    assert asked == {**body, "stream_options": {"include_usage": True}}
    kept = {**body, "stream_options": {"continuous_usage_stats": False}}
    assert json.loads(ask_for_usage("completions", kept) or b"{}")["stream_options"] == {
        "continuous_usage_stats": False, "include_usage": True}
    assert ask_for_usage("chat", {**body, "stream_options": {"include_usage": True}}) is None
    assert ask_for_usage("chat", {**body, "stream": False}) is None
    assert ask_for_usage("embed", {"model": "m", "input": "x"}) is None
    assert ask_for_usage("chat", {**body, "stream_options": "odd"}) is None


def test_a_gateway_counts_an_openai_stream_and_the_client_gets_what_it_asked(
    scripted_node, gateway,
) -> None:
    node = scripted_node(api="openai")
    gw = gateway([StaticRoute("pool", [Upstream("oai", node.url, "openai", ("oai-model",))])])
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0,
                           timeout=30)
    chunks = list(client.chat.completions.create(
        model="oai-model", stream=True, messages=[{"role": "user", "content": "hi"}]))
    assert node.requests[-1]["body"]["stream_options"] == {"include_usage": True}
    assert all(c.usage is None and c.choices for c in chunks)  # no usage chunk: not asked
    asked = list(client.chat.completions.create(
        model="oai-model", stream=True, messages=[{"role": "user", "content": "hi"}],
        stream_options={"include_usage": True}))
    assert asked[-1].usage is not None and asked[-1].usage.completion_tokens == 5
    # the gateway records a stream's outcome just after its last byte: wait for both
    deadline = time.monotonic() + 30
    while len(recent := httpx.get(gw.url + "/sollol/overview").json()["recent"]) < 2:
        assert time.monotonic() < deadline, recent
        time.sleep(0.05)
    assert [r["tokens"] for r in recent[-2:]] == [5, 5]


def test_a_chat_stream_without_the_assistant_role_gets_it_on_its_first_chunk() -> None:
    """llama-server drops the role chunk when its first token is half a UTF-8 character."""
    from sollol.dialects.chat_passthrough import ChatPassthrough

    content = b'data: {"choices":[{"index":0,"delta":{"content":"\\ufffd und"}}]}\n\n'
    usage = b'data: {"choices":[],"usage":{"completion_tokens":2,"prompt_tokens":3}}\n\n'
    raw = content + content + usage + b"data: [DONE]\n\n"
    for hide in (True, False):
        stream = ChatPassthrough(hide_usage=hide)
        out = b"".join(stream.feed(raw[i:i + 9]) for i in range(0, len(raw), 9)) + stream.finish()
        chunks = [json.loads(line[6:]) for line in out.split(b"\n")
                  if line.startswith(b"data: {")]
        assert chunks[0]["choices"][0]["delta"] == {"content": "\ufffd und", "role": "assistant"}
        assert chunks[1]["choices"][0]["delta"] == {"content": "\ufffd und"}  # only the first
        assert (len(chunks) == 2) is hide and out.endswith(b"data: [DONE]\n\n")
        assert stream.complete and stream.tokens == 2
    roled = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":null}}]}\n\n'
    stream = ChatPassthrough(hide_usage=False)
    assert stream.feed(roled) == roled  # a stream with its role passes untouched
