"""A node (or anything answering at its address) that breaks HTTP must never make one request
receive another's reply: each misbehaviour against the upstream client, played by a scripted raw
server, then the whole class at once as a property (hypothesis interleaves hostile scripts with
honest requests on one pool)."""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sollol.forwarding.upstream import MAX_HEAD_BYTES, UpstreamError, UpstreamPool
from sollol.testing.hostile_node import chunked, response
from sollol.testing.static_route import StaticRoute, Upstream


def deadline(seconds: float = 60.0) -> float:
    return asyncio.get_running_loop().time() + seconds


async def fetch(pool: UpstreamPool, url: str, token: str = "t") -> tuple[int, bytes]:
    body = json.dumps({"token": token}).encode()
    reply = await pool.post(url, "/api/chat", body, deadline())
    return reply.status, await reply.read()


def answer(data: bytes | None = None, keep: bool = True):
    """A script: reply `data` (default: the request's token as the body) to every request."""
    async def script(request, writer):
        writer.write(data if data is not None else response(request.json()["token"].encode()))
        await writer.drain()
        return keep
    return script


def idle_connections(pool: UpstreamPool) -> list:
    return [conn for idle in pool._idle.values() for conn in idle
            if conn.transport is not None and not conn.transport.is_closing()]


async def test_bytes_on_an_idle_connection_poison_it(hostile_node):
    node = hostile_node(answer())
    pool = UpstreamPool()
    assert await fetch(pool, node.url, "first") == (200, b"first")
    assert len(idle_connections(pool)) == 1

    async def stale() -> None:  # a late second reply to "first", on the now idle connection
        node.writers[0].write(response(b"first"))
        await node.writers[0].drain()

    await asyncio.wrap_future(node.call(stale))
    await asyncio.to_thread(node.wait_closed_by_client, 0)  # the client closed it
    assert idle_connections(pool) == []
    assert await fetch(pool, node.url, "second") == (200, b"second")
    assert node.connections == 2 and [r.connection for r in node.requests] == [0, 1]
    await pool.close()


async def test_interim_responses_are_skipped(hostile_node):
    async def script(request, writer):
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n"
                     b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n"
                     + response(request.json()["token"].encode()))
        await writer.drain()
        return True

    node = hostile_node(script)
    pool = UpstreamPool()
    assert await fetch(pool, node.url, "a") == (200, b"a")
    assert await fetch(pool, node.url, "b") == (200, b"b")
    assert node.connections == 1  # the connection stays good
    await pool.close()


async def test_endless_interim_responses_are_an_error(hostile_node):
    node = hostile_node(answer(b"HTTP/1.1 103 Early Hints\r\n\r\n" * 50))
    with pytest.raises(UpstreamError, match="interim"):
        await fetch(UpstreamPool(), node.url)


@pytest.mark.parametrize(("data", "error"), [
    # the reply, then a second one nobody asked for, in one write
    (response(b"t") + response(b"other"), "after a complete response"),
    # a Content-Length shorter than the body
    (response(b"t-and-more", length=1), "after a complete response"),
    # a Content-Length longer than the body (then the node closes)
    (response(b"t", length=10), "before the response was complete"),
    (response(b"t", headers="Content-Length: 1\r\n", length=1), "Duplicate Content-Length"),
    (response(b"t", headers="Content-Length: 2\r\n", length=1), "Duplicate Content-Length"),
    (response(b"1\r\nt\r\n0\r\n\r\n", headers="Transfer-Encoding: chunked\r\n", length=14),
     "Transfer-Encoding can't be present with Content-Length"),
    (response(b"t", length=-1, headers="Transfer-Encoding: chunked\r\nContent-Length: 1\r\n"),
     "Content-Length can't be present with Transfer-Encoding"),
    (response(b"t", headers="Content-Length: 1, 1\r\n", length=-1), "bad HTTP"),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\nxx",
     "switched protocols"),
    (response(b"t", headers="X-Big: " + "a" * MAX_HEAD_BYTES + "\r\n"), "bytes of status line"),
    (b"HTTP/1.1 200 OK\r\nX-Endless: " + b"a" * (4 * MAX_HEAD_BYTES), "bytes of status line"),
    (b"SSH-2.0-OpenSSH_9.6\r\n", "bad HTTP"),
], ids=["second-reply", "length-short", "length-long", "duplicate-length", "conflicting-length",
        "length-then-chunked", "chunked-then-length", "length-list", "upgrade", "huge-header",
        "endless-header", "not-http"])
async def test_broken_framing_is_an_error_and_the_connection_is_dropped(hostile_node, data,
                                                                       error):
    node = hostile_node(answer(data, keep=b"Content-Length: 10\r\n" not in data))
    pool = UpstreamPool()
    with pytest.raises(UpstreamError, match=error):
        await fetch(pool, node.url)
    assert idle_connections(pool) == []
    await pool.close()


async def test_a_reply_that_arrives_before_the_request_is_written_poisons_the_connection(
        hostile_node):
    sent = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def early(writer):
        writer.write(response(b"stale"))
        await writer.drain()
        loop.call_soon_threadsafe(sent.set)

    node = hostile_node(answer(), on_connect=early)
    pool = UpstreamPool()
    key = pool._target(node.url)[0]
    conn = await pool._connect(key, deadline())
    await sent.wait()
    with pytest.raises(UpstreamError, match="before any request was sent"):
        await conn.wait()
    with pytest.raises(UpstreamError, match="before any request was sent"):
        await pool._send(key, conn, b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", deadline())
    assert await asyncio.to_thread(node.wait_closed_by_client, 0)
    assert node.requests == []  # the request was never written to it
    await pool.close()


async def test_an_oversized_whole_body_is_an_error(hostile_node):
    node = hostile_node(answer(response(b"x" * 5000)))
    pool = UpstreamPool(max_reply=4096)
    with pytest.raises(UpstreamError, match="larger than 4096 bytes"):
        await fetch(pool, node.url)
    assert idle_connections(pool) == []
    # a body the size of the limit is fine, streamed bodies are not held and not limited
    node.script = answer(response(b"x" * 4096))
    assert await fetch(pool, node.url) == (200, b"x" * 4096)
    node.script = answer(chunked(b"y" * 9000, size=1000))
    reply = await pool.post(node.url, "/api/chat", b"{}", deadline())
    total = 0
    while piece := await reply.next_chunk():
        total += len(piece)
    assert total == 9000
    await pool.close()


@pytest.mark.parametrize("data", [
    response(b"t", version="1.0", length=-1),
    response(b"t", headers="Connection: close\r\n", length=-1),
    response(b"t", headers="Transfer-Encoding: gzip\r\n", length=-1),
], ids=["http-1.0", "connection-close", "non-chunked-coding"])
async def test_close_delimited_bodies_end_at_close_and_are_not_reused(hostile_node, data):
    node = hostile_node(answer(data, keep=False))
    pool = UpstreamPool()
    assert await fetch(pool, node.url) == (200, b"t")
    assert await fetch(pool, node.url) == (200, b"t")
    assert node.connections == 2
    await pool.close()


# ---------------------------------------------------------------- the class, as a property

def _reply_for(script: str, token: bytes) -> tuple[bytes, bool]:
    """What the node sends for one request under `script`, and whether it keeps the connection."""
    honest = response(token)
    return {
        "honest": (honest, True),
        "chunked": (chunked(token, size=3), True),
        "interim": (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\n" + honest,
                    True),
        "http10": (response(token, version="1.0", length=-1), False),
        "late_stale": (honest, True),
        "second_reply": (honest + response(b"STALE:" + token), True),
        "length_short": (response(token + b"STALE", length=len(token)), True),
        "length_long": (response(token, length=len(token) + 5), False),
        "duplicate_length": (response(token, headers=f"Content-Length: {len(token)}\r\n"), True),
        "length_and_chunked": (response(token, headers="Transfer-Encoding: chunked\r\n"), True),
        "huge_header": (response(token, headers=f"X-Big: {'a' * MAX_HEAD_BYTES}\r\n"), True),
        "upgrade": (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade"
                    b"\r\n\r\n" + honest, True),
        "oversized": (response(token + b"x" * 5000), True),
        "no_reply": (b"", False),
        "garbage": (b"\x00\xffnot http at all\r\n\r\n", True),
    }[script]


HONEST = ("honest", "chunked", "interim", "http10", "late_stale")
HOSTILE = ("second_reply", "length_short", "length_long", "duplicate_length",
           "length_and_chunked", "huge_header", "upgrade", "oversized", "no_reply", "garbage")


@pytest.fixture
def scripted_pool_node(hostile_node):
    """A node whose every reply follows the script named in the request; `late` collects the
    connections that owe a stale second reply (sent between rounds, while they are idle)."""
    late: list[int] = []

    async def script(request, writer):
        body = request.json()
        data, keep = _reply_for(body["script"], body["token"].encode())
        writer.write(data)
        await writer.drain()
        if body["script"] == "late_stale":
            late.append(request.connection)
        return keep

    return hostile_node(script), late


async def _play(node, late: list[int], rounds: list[list[str]]) -> None:
    pool = UpstreamPool(max_reply=4096)
    serial = 0
    for scripts in rounds:
        tokens = []
        for script in scripts:
            serial += 1
            tokens.append(f"{script}-{serial}")

        async def one(script: str, token: str) -> bytes | BaseException:
            body = json.dumps({"token": token, "script": script}).encode()
            try:
                reply = await pool.post(node.url, "/api/chat", body, deadline())
                return await reply.read()
            except UpstreamError as exc:
                return exc

        results = await asyncio.gather(*(one(s, t) for s, t in zip(scripts, tokens,
                                                                    strict=True)))
        for script, token, result in zip(scripts, tokens, results, strict=True):
            if script in HONEST:  # hostile neighbours never break an honest exchange
                assert result == token.encode(), (script, token, result)
            else:  # its own reply or an error: never anything else
                assert isinstance(result, UpstreamError) or result == token.encode(), \
                    (script, token, result)
        # the nodes that owe a stale reply send it now, on idle connections: each must be closed
        owed, late[:] = list(late), []
        for connection in owed:
            writer = node.writers[connection]

            async def stale(writer=writer) -> None:
                writer.write(response(b"STALE"))
                with contextlib.suppress(ConnectionError):  # the client may have cut it already
                    await writer.drain()

            await asyncio.wrap_future(node.call(stale))
        for connection in owed:
            assert await asyncio.to_thread(node.wait_closed_by_client, connection)
    await pool.close()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rounds=st.lists(st.lists(st.sampled_from(HONEST + HOSTILE), min_size=1, max_size=6),
                       min_size=1, max_size=4))
def test_every_request_gets_its_own_reply_or_an_error(scripted_pool_node, rounds):
    asyncio.run(_play(*scripted_pool_node, rounds))


@pytest.mark.parametrize(("data", "error"), [
    (response(b'{"done": true}STALE', length=14), "after a complete response"),
    (response(b'{"done": true}', length=50), "before the response was complete"),
    (response(b'{"done": true, "pad": "' + b"x" * 5000 + b'"}'), "larger than 4096 bytes"),
], ids=["length-short", "length-long", "oversized"])
def test_the_gateway_reports_a_broken_reply_naming_the_node(hostile_node, gateway, data, error):
    node = hostile_node(answer(data, keep=False))
    route = StaticRoute("pool", [Upstream("node-7", node.url, "ollama", ("m",))])
    gw = gateway([route], max_reply_bytes=4096)
    reply = httpx.post(gw.url + "/api/generate", json={"model": "m", "prompt": "x",
                                                       "stream": False}, timeout=60)
    assert reply.status_code in (502, 503)
    message = reply.json()["error"]
    assert "node-7" in message and error in message


@pytest.mark.parametrize(("path", "body"), [
    ("/api/chat", {"model": "m", "messages": [{"role": "user", "content": "x"}]}),
    ("/v1/chat/completions", {"model": "m", "stream": True,
                              "messages": [{"role": "user", "content": "x"}]}),
], ids=["passthrough", "translated"])
def test_an_endless_stream_line_is_cut_with_an_error(hostile_node, gateway, monkeypatch, path,
                                                     body):
    monkeypatch.setattr("sollol.dialects.streams.MAX_LINE", 64 * 1024)
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    line = b'{"message": {"role": "assistant", "content": "' + b"a" * 300_000

    async def script(request, writer):
        writer.write(head + b"".join(b"%x\r\n%s\r\n" % (len(p), p)
                                     for p in (line[i:i + 8192]
                                               for i in range(0, len(line), 8192))))
        await writer.drain()
        return True  # and never a newline: the gateway must give up, not hold it all

    node = hostile_node(script)
    gw = gateway([StaticRoute("pool", [Upstream("node-9", node.url, "ollama", ("m",))])])
    with httpx.stream("POST", gw.url + path, json=body, timeout=60) as reply:
        text = b"".join(reply.iter_bytes())
    assert b"longer than 65536 bytes" in text and b"node-9" in text
    assert len(text) < len(line)  # never relayed past the limit


async def test_a_large_body_arriving_with_its_headers_is_not_taken_for_huge_headers(
        hostile_node):
    body = b"x" * (4 * MAX_HEAD_BYTES)
    node = hostile_node(answer(response(body)))
    pool = UpstreamPool()
    assert await fetch(pool, node.url) == (200, body)
    await pool.close()


DEEP = b"[" * 200_000 + b"]" * 200_000


@pytest.mark.parametrize(("path", "body", "reply"), [
    # whole replies translated for the client (the JSON is parsed, not relayed)
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}]},
     response(b'{"message": ' + DEEP + b', "done": true}')),
    # an error body whose message the gateway reads
    ("/api/generate", {"model": "m", "prompt": "x", "stream": False},
     b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
     % (len(DEEP) + 11) + b'{"error": ' + DEEP + b"}"),
    # a stream line translated chunk by chunk, and tool-call arguments as a nested string
    ("/v1/chat/completions", {"model": "m", "stream": True,
                              "messages": [{"role": "user", "content": "x"}]},
     response(b'{"message": {"role": "assistant", "content": "", "tool_calls": [{"function": '
              b'{"name": "f", "arguments": "' + b"[" * 100_000 + b'"}}]}, "done": false}\n'
              + DEEP + b'\n{"done": true}\n')),
], ids=["whole-reply", "error-body", "stream-and-arguments"])
def test_json_nested_without_end_from_a_node_is_an_error_not_a_crash(hostile_node, gateway, path,
                                                                       body, reply):
    """Python's json raises RecursionError (not ValueError) on deep nesting: every place that
    reads a node's JSON must turn it into an ordinary error."""
    node = hostile_node(answer(reply, keep=False))
    gw = gateway([StaticRoute("pool", [Upstream("node-5", node.url, "ollama", ("m",))])])
    got = httpx.post(gw.url + path, json=body, timeout=60)
    assert got.status_code < 500 or got.status_code in (502, 503)
    assert got.headers["content-type"].startswith(("application/json", "text/event-stream"))
    if got.status_code >= 500:
        assert "node-5" in got.text
