"""Streaming failure semantics: a stalled stream is cut after `stream_idle_timeout`, a stream cut
after its first byte ends with an error in the client's own dialect (which the official clients
raise), and failover happens only before the first byte."""

from __future__ import annotations

import json

import httpx
import ollama
import openai
import pytest

from sollol.testing.static_route import StaticRoute, Upstream

MESSAGES = [{"role": "user", "content": "hi"}]
CHAT = {"model": "m", "messages": MESSAGES, "stream": True}
# (backend dialect, client path): every pairing, translated or not
PAIRS = [("ollama", "/api/chat"), ("ollama", "/v1/chat/completions"),
         ("openai", "/api/chat"), ("openai", "/v1/chat/completions")]


def _stalling_backend(kind, emulator, scripted_node):
    """A backend of `kind` that sends a first chunk and then nothing, connection open."""
    if kind == "ollama":
        node = emulator(models=["m"])
        node.set_faults(stall_after=1)
        return node.url
    return scripted_node(api="openai", pause_after_first=3600).url


def _last_event(path, body):
    """The stream's last line (Ollama) or SSE data payload (OpenAI), parsed."""
    if path.startswith("/api/"):
        lines = [line for line in body.splitlines() if line.strip()]
        return json.loads(lines[-1])
    events = [e.strip().removeprefix("data:").strip() for e in body.split("\n\n")]
    return json.loads([e for e in events if e and e != "[DONE]"][-1])


@pytest.mark.parametrize(("kind", "path"), PAIRS)
def test_a_stalled_stream_is_cut_with_an_error_in_the_clients_dialect(
        emulator, scripted_node, gateway, kind, path):
    url = _stalling_backend(kind, emulator, scripted_node)
    route = StaticRoute("pool", [Upstream("stalled", url, kind, ("m",))])
    gw = gateway([route], stream_idle_timeout=0.5)
    with httpx.stream("POST", gw.url + path, json=CHAT, timeout=60) as reply:
        assert reply.status_code == 200
        body = reply.read().decode()
    error = _last_event(path, body)["error"]
    message = error if path.startswith("/api/") else error["message"]
    assert "stream cut" in message and "stalled" in message
    assert "stalled" in message.split("stream cut: backend ")[1]  # names the node first
    assert "0.5s (stream_idle_timeout)" in message
    if not path.startswith("/api/"):
        assert error["code"] == "stream_interrupted" and "[DONE]" not in body
    [(backend, outcome)] = route.outcomes
    assert backend == "stalled" and not outcome.ok and outcome.status == 504
    assert outcome.first_byte_sent


def test_official_clients_raise_on_a_stalled_stream(emulator, gateway):
    node = emulator(models=["m"])
    node.set_faults(stall_after=2)
    gw = gateway([StaticRoute("pool", [Upstream("n1", node.url, "ollama", ("m",))])],
                 stream_idle_timeout=0.5)
    pieces = []
    with pytest.raises(ollama.ResponseError, match="n1 stalled"):
        for part in ollama.Client(gw.url).chat(model="m", messages=MESSAGES, stream=True):
            pieces.append(part.message.content)
    assert len(pieces) == 2  # what arrived was delivered, then the client raised
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIError, match="n1 stalled"):
        for _ in client.chat.completions.create(model="m", messages=MESSAGES, stream=True):
            pass
    with pytest.raises(openai.APIError, match="n1 stalled"):
        for _ in client.completions.create(model="m", prompt="hi", stream=True):
            pass


def test_a_slow_steady_stream_outlives_the_idle_timeout(emulator, gateway):
    # 12 tokens at 8/s: the whole stream takes ~1.5 s, no gap reaches the 0.5 s idle limit
    node = emulator(models=["m"], tokens_per_second=8, response_tokens=12)
    gw = gateway([StaticRoute("pool", [Upstream("slow", node.url, "ollama", ("m",))])],
                 stream_idle_timeout=0.5)
    parts = list(ollama.Client(gw.url).chat(model="m", messages=MESSAGES, stream=True))
    assert parts[-1].done and len(parts) == 13
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_the_whole_request_timeout_still_cuts_a_stream_that_never_stalls(emulator, gateway):
    node = emulator(models=["m"], tokens_per_second=10, response_tokens=200)
    route = StaticRoute("pool", [Upstream("long", node.url, "ollama", ("m",))])
    gw = gateway([route], request_timeout=1.0, stream_idle_timeout=30)
    with pytest.raises(ollama.ResponseError, match="long failed mid-stream \\(timed out\\)"):
        for _ in ollama.Client(gw.url).generate(model="m", prompt="x", stream=True):
            pass
    assert route.outcomes[0][1].status == 504


@pytest.mark.parametrize("cut_at", [0, 1, 3, 6, None])
@pytest.mark.parametrize("fault", ["drop_after", "stall_after"])
@pytest.mark.parametrize("path", ["/api/generate", "/api/chat", "/v1/chat/completions",
                                  "/v1/completions"])
def test_failover_only_before_the_first_byte_and_never_a_clean_looking_cut(
        emulator, gateway, cut_at, fault, path):
    """Wherever a stream breaks, the client gets either the whole answer (from one node) or its
    beginning plus an error naming the node; a request whose first byte went out never runs
    again elsewhere."""
    faulty, spare = emulator(models=["m"]), emulator(models=["m"])
    if cut_at is not None:
        faulty.set_faults(**{fault: cut_at})
    route = StaticRoute("pool", [Upstream("faulty", faulty.url, "ollama", ("m",)),
                                 Upstream("spare", spare.url, "ollama", ("m",))])
    gw = gateway([route], stream_idle_timeout=0.5, request_timeout=2.0)
    body = {"model": "m", "stream": True, "messages": MESSAGES, "prompt": "hi"}
    with httpx.stream("POST", gw.url + path, json=body, timeout=60) as reply:
        text = reply.read().decode()
        served_by = reply.headers.get("x-sollol-backend")
    runs = faulty.stats()["total"] + spare.stats()["total"]
    if cut_at == 0 and fault == "stall_after":  # headers, then silence: request_timeout ends it
        assert reply.status_code == 503 and "faulty: timed out" in text
        assert faulty.stats()["total"] == 1 and spare.stats()["total"] == 0
        return
    last = _last_event(path, text)
    complete = "[DONE]" in text if path.startswith("/v1/") else last.get("done") is True
    if cut_at is None:  # no fault: complete, one run
        assert complete and "error" not in last and runs == 1 and served_by == "faulty"
    elif cut_at == 0 and fault == "drop_after":  # nothing was sent: the spare serves it all
        assert complete and "error" not in last and served_by == "spare"
        assert faulty.stats()["total"] == 1 and spare.stats()["total"] == 1
    else:  # bytes reached the client: an error naming the node, no second run
        message = last["error"] if path.startswith("/api/") else last["error"]["message"]
        assert message.startswith("stream cut: backend faulty ")
        assert spare.stats()["total"] == 0 and faulty.stats()["total"] == 1
        assert "[DONE]" not in text and '"done": true' not in text and '"done":true' not in text


async def _chunked_server(gaps):
    """A raw HTTP server: headers and a first chunk, then one chunk after each gap in `gaps`
    (None: go silent with the connection open), then the end."""
    import asyncio

    async def serve(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        for gap in gaps:
            if gap is None:
                await asyncio.sleep(3600)
            await asyncio.sleep(gap)
            writer.write(b"4\r\nmore\r\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


async def test_idle_watch_cuts_silence_but_not_a_reader_that_falls_behind():
    import asyncio

    from sollol.forwarding.upstream import StreamIdle, UpstreamPool

    pool = UpstreamPool()
    loop = asyncio.get_running_loop()
    steady = await _chunked_server([0.1] * 4)
    silent = await _chunked_server([0.05, None])
    try:
        port = steady.sockets[0].getsockname()[1]
        response = await pool.post(f"http://127.0.0.1:{port}", "/", b"{}", loop.time() + 30)
        assert await response.next_chunk() == b"first"
        response.watch_idle(0.25)
        await asyncio.sleep(0.8)  # the reader falls behind; the backend kept sending
        assert await response.read() == b"more" * 4

        port = silent.sockets[0].getsockname()[1]
        response = await pool.post(f"http://127.0.0.1:{port}", "/", b"{}", loop.time() + 30)
        assert await response.next_chunk() == b"first"
        response.watch_idle(0.25)
        assert await response.next_chunk() == b"more"
        with pytest.raises(StreamIdle, match=r"sent nothing for 0\.25s"):
            await response.next_chunk()
        response.close()
    finally:
        for server in (steady, silent):
            server.close()
        await pool.close()
