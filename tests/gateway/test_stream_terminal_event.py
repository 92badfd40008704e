"""A stream whose terminal event reached the client is a success, in every dialect.

Codex closes its connection a millisecond after `response.completed`, before the HTTP response
ends; other clients stop reading at `[DONE]` or `message_stop`. Here a node lingers after its
terminal event (holding the response open), a raw client reads up to the terminal event and
hangs up, and the request must be recorded as 200 in the events, the overview and /metrics; a
client that hangs up before the terminal event is still a 499.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest

from sollol.testing.hostile_node import RawRequest
from sollol.testing.static_route import StaticRoute, Upstream

OPENAI_CHAT = [
    {"id": "c", "object": "chat.completion.chunk", "model": "m",
     "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]},
    {"id": "c", "object": "chat.completion.chunk", "model": "m",
     "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    {"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [],
     "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}},
]
MESSAGE = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
           "stop_reason": None, "usage": {"input_tokens": 3, "output_tokens": 0}}
ANTHROPIC = [
    ("message_start", {"type": "message_start", "message": MESSAGE}),
    ("content_block_start", {"type": "content_block_start", "index": 0,
                             "content_block": {"type": "text", "text": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "text_delta", "text": "Hi"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                       "usage": {"output_tokens": 1}}),
    ("message_stop", {"type": "message_stop"}),
]
RESPONSE = {"id": "resp_1", "object": "response", "model": "m", "status": "in_progress",
            "output": []}
ITEM = {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
        "content": [{"type": "output_text", "text": "Hi", "annotations": []}]}
RESPONSES = [
    {"type": "response.created", "response": RESPONSE},
    {"type": "response.output_item.added", "output_index": 0,
     "item": {**ITEM, "status": "in_progress", "content": []}},
    {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
     "content_index": 0, "delta": "Hi"},
    {"type": "response.output_item.done", "output_index": 0, "item": ITEM},
    {"type": "response.completed", "response": {
        **RESPONSE, "status": "completed", "output": [ITEM],
        "usage": {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4}}},
]
OLLAMA = [
    {"model": "m", "created_at": "2026-01-01T00:00:00Z",
     "message": {"role": "assistant", "content": "Hi"}, "done": False},
    {"model": "m", "created_at": "2026-01-01T00:00:00Z",
     "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
     "prompt_eval_count": 3, "eval_count": 1},
]


def node_stream(path: str) -> list[bytes]:
    """What a node sends for `path`, one piece per event (its dialect decided by the path)."""
    if path == "/v1/chat/completions":
        return [b"data: " + json.dumps(c).encode() + b"\n\n" for c in OPENAI_CHAT] + [
            b"data: [DONE]\n\n"]
    if path == "/v1/messages":
        return [f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in ANTHROPIC]
    if path == "/v1/responses":
        return [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in RESPONSES]
    return [json.dumps(o).encode() + b"\n" for o in OLLAMA]  # /api/chat


def lingering(linger: float, *, before_end: bool = False, before_done: bool = False):
    """A node that streams its answer, then holds the response open for `linger` seconds
    before the last chunk (what a busy node, or a proxy in between, may do); `before_end`:
    it pauses before its terminal event instead; `before_done`: before the last event."""
    async def script(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        sse = request.path.startswith("/v1/")
        kind = b"text/event-stream" if sse else b"application/x-ndjson"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: " + kind
                     + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
        pieces = [b"%x\r\n%s\r\n" % (len(p), p) for p in node_stream(request.path)]
        pieces.append(b"0\r\n\r\n")
        cut = 1 if before_end else len(pieces) - (2 if before_done else 1)
        writer.write(b"".join(pieces[:cut]))
        await writer.drain()
        await asyncio.sleep(linger)
        writer.write(b"".join(pieces[cut:]))
        await writer.drain()
        return True
    return script


CLIENTS = {  # client dialect: (path, body, the bytes its terminal event ends with)
    "openai": ("/v1/chat/completions", {"stream": True, "messages": [
        {"role": "user", "content": "hi"}]}, b"data: [DONE]\n\n"),
    "anthropic": ("/v1/messages", {"stream": True, "max_tokens": 8, "messages": [
        {"role": "user", "content": "hi"}]}, b'"message_stop"}\n\n'),
    "responses": ("/v1/responses", {"stream": True, "input": "hi"}, b"\n\n"),
    "ollama": ("/api/chat", {"messages": [{"role": "user", "content": "hi"}]}, b"\n"),
}
TERMINAL = {"openai": b"[DONE]", "anthropic": b"message_stop", "responses": b"response.completed",
            "ollama": b'"done": true'}


def read_to_terminal(url: str, path: str, body: dict, dialect: str, *, early: bool) -> bytes:
    """POST with a raw socket, read until the terminal event has fully arrived (or, `early`,
    until the first event), then close the connection at once."""
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps({"model": "m", **body}).encode()
    sock = socket.create_connection((host, int(port)), timeout=30)
    try:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        got = b""
        marker, end = TERMINAL[dialect], CLIENTS[dialect][2]
        while True:
            data = sock.recv(65536)
            assert data, f"the gateway ended the response early: {got!r}"
            got += data
            if early and got.count(b"\r\n\r\n") and (b"data:" in got or b"{" in got):
                return got
            at = got.replace(b" ", b"").find(marker.replace(b" ", b""))
            if at >= 0 and got.endswith(end + b"\r\n"):
                return got
    finally:
        sock.close()


def recorded(url: str, count: int) -> list[dict]:
    deadline = time.monotonic() + 30
    while True:
        events = httpx.get(url + "/sollol/events").json()["events"]
        routed = list(events)
        if len(routed) >= count or time.monotonic() > deadline:
            return routed
        time.sleep(0.05)


@pytest.mark.parametrize("node_api", ["openai", "ollama"])
@pytest.mark.parametrize("dialect", list(CLIENTS))
def test_client_leaving_after_the_terminal_event_is_a_success(hostile_node, gateway, dialect,
                                                             node_api):
    node = hostile_node(lingering(linger=5.0))
    gw = gateway([StaticRoute("pool", [Upstream("n", node.url, node_api, ("m",))])])
    path, body, _ = CLIENTS[dialect]
    got = read_to_terminal(gw.url, path, body, dialect, early=False)
    assert TERMINAL[dialect].replace(b" ", b"") in got.replace(b" ", b"")
    [event] = recorded(gw.url, 1)
    assert (event["status"], event["ok"], event["error"]) == (200, True, None), event
    assert event["tokens"] == 1
    totals = httpx.get(gw.url + "/sollol/overview").json()["requests"]
    assert totals["requests"] == 1 and totals["errors"] == 0
    metrics = httpx.get(gw.url + "/metrics").text
    counted = [line for line in metrics.splitlines() if line.startswith("sollol_requests_total{")]
    assert len(counted) == 1 and 'code="200"' in counted[0], counted


@pytest.mark.parametrize("dialect", list(CLIENTS))
def test_client_leaving_before_the_terminal_event_is_still_a_499(hostile_node, gateway, dialect):
    node = hostile_node(lingering(linger=5.0, before_end=True))
    gw = gateway([StaticRoute("pool", [Upstream("n", node.url, "openai", ("m",))])])
    path, body, _ = CLIENTS[dialect]
    got = read_to_terminal(gw.url, path, body, dialect, early=True)
    assert TERMINAL[dialect].replace(b" ", b"") not in got.replace(b" ", b"")
    [event] = recorded(gw.url, 1)
    assert (event["status"], event["ok"], event["error"]) == (499, False, "client disconnected")


def test_openai_client_leaving_after_the_finish_chunk_is_a_success(hostile_node, gateway):
    """An OpenAI client may stop reading at the chunk with a `finish_reason`, before `[DONE]`."""
    node = hostile_node(lingering(linger=5.0, before_done=True))
    gw = gateway([StaticRoute("pool", [Upstream("n", node.url, "openai", ("m",))])])
    host, port = gw.url.removeprefix("http://").split(":")
    payload = json.dumps({"model": "m", **CLIENTS["openai"][1]}).encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
                     .encode() + payload)
        got = b""
        while b'"finish_reason": "stop"' not in got.replace(b'":"', b'": "'):
            data = sock.recv(65536)
            assert data, got
            got += data
    assert b"[DONE]" not in got
    [event] = recorded(gw.url, 1)
    assert (event["status"], event["ok"], event["tokens"]) == (200, True, 1), event
