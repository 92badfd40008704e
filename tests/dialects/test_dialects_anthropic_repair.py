"""A node's own Messages stream that lacks `message_start` is repaired on the way through.

Seen with this project's llama-server build: when the first generated token is an incomplete
UTF-8 sequence, its `/v1/messages` stream starts at `content_block_start`, and the official
`anthropic` client fails on it (`get_final_message` finds no message).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator

import anthropic
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from sollol.dialects.anthropic_stream import AnthropicPassthrough
from sollol.testing.static_route import StaticRoute, Upstream


def sse(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


START = sse("message_start", {"type": "message_start", "message": {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
    "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 0}}})
BODY = (sse("content_block_start", {"type": "content_block_start", "index": 0,
                                    "content_block": {"type": "text", "text": ""}})
        + sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                      "delta": {"type": "text_delta", "text": "\ufffd und"}})
        + sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        + sse("message_delta", {"type": "message_delta", "delta": {
            "stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 2}})
        + sse("message_stop", {"type": "message_stop"}))


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=200, deadline=None)
@given(st.booleans(), st.lists(st.integers(0, 10_000), max_size=8))
def test_every_stream_gets_exactly_one_message_start_and_loses_nothing(
    has_start: bool, cuts: list[int],
) -> None:
    original = (START if has_start else b"") + BODY
    stream = AnthropicPassthrough("m")
    out = b"".join(stream.feed(p) for p in pieces(original, cuts)) + stream.finish()
    assert out.count(b"event: message_start") == 1
    assert out.startswith(b"event: message_start")
    assert out.endswith(original) and (out == original) == has_start
    assert stream.complete


def test_a_stream_cut_before_its_first_event_is_whole_starts_with_the_error() -> None:
    stream = AnthropicPassthrough("m")
    assert stream.feed(b"event: content_blo") == b""
    assert stream.at_boundary  # nothing reached the client: the error event comes first


@pytest.fixture
def node_without_message_start() -> Iterator[str]:
    """An OpenAI-compatible node whose `/v1/messages` stream starts at content_block_start."""

    async def messages(request: web.Request) -> web.StreamResponse:
        reply = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await reply.prepare(request)
        for index in range(0, len(BODY), 40):  # in small pieces, as a real node writes
            await reply.write(BODY[index:index + 40])
        await reply.write_eof()
        return reply

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_the_official_client_reads_a_repaired_stream(gateway, node_without_message_start):
    route = StaticRoute("pool", [Upstream("bad-node", node_without_message_start, api="openai",
                                          models=("m",))])
    thread = gateway(routes=[route])
    client = anthropic.Anthropic(base_url=thread.url, api_key="unused", max_retries=0)
    with client.messages.stream(model="m", max_tokens=8,
                                messages=[{"role": "user", "content": "hi"}]) as stream:
        final = stream.get_final_message()
    assert final.role == "assistant" and final.stop_reason == "end_turn"
    assert final.content[0].text == "\ufffd und"
