"""`sollol.Cluster` streams (sync and async, cancellable), tool calls and structured output, in
process and against a remote gateway."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sollol
from sollol.client.streaming import chunks
from sollol.errors import BackendError, ModelNotFound
from sollol.testing.emulator import EmulatedModel

MODEL = "llama3.2:1b"
THINKER = EmulatedModel("thinker:1b", capabilities=("completion", "tools", "thinking"))
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}}, "required": ["city"]}}}
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"},
                                           "score": {"type": "integer"}},
          "required": ["answer", "score"]}


@pytest.fixture(params=["in-process", "remote"])
def cluster(request, emulator, pool_cluster, pool_gateway):
    """One pool of emulated nodes, reached in process or through a gateway."""
    node = emulator(models=[MODEL, THINKER], tokens_per_second=200, response_tokens=12)
    if request.param == "in-process":
        yield pool_cluster([node.url]), node
        return
    gateway = pool_gateway(node.address)
    made = sollol.Cluster(gateway=gateway.url, timeout=60)
    yield made, node
    if made.running:
        made.stop()


def _no_request_in_flight(node) -> None:
    """The node notices a closed connection at its next write (paced): wait for that."""
    for _ in range(600):
        if node.stats()["in_flight"] == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"requests still in flight on the node: {node.stats()}")


def test_sync_stream_matches_the_whole_reply(cluster) -> None:
    made, _node = cluster
    with made as c:
        whole = c.chat(MODEL, "tell me", options={"temperature": 0})
        with c.stream_chat(MODEL, "tell me", options={"temperature": 0}) as stream:
            parts = list(stream)
        assert len(parts) > 3 and parts[-1].done and parts[-1].done_reason == "stop"
        assert "".join(p.text for p in parts) == whole.text
        assert stream.route["route"] == "pool" and stream.route["backend"]
        generated = list(c.stream_generate(MODEL, "once", options={"num_predict": 3}))
        assert generated[-1].done_reason == "length"
        thought = list(c.stream_chat("thinker:1b", "why?", think=True))
        assert any(p.thinking for p in thought)
        with pytest.raises(ModelNotFound):
            list(c.stream_chat("missing", "x"))
        with pytest.raises(ValueError, match="embeddings"):
            c.stream(sollol.Task.embed(MODEL, "x"))


def test_async_stream_and_cancellation(cluster) -> None:
    made, node = cluster

    async def run() -> None:
        async with made as c:
            parts = [p async for p in c.astream_chat(MODEL, "tell me")]
            assert parts[-1].done and "".join(p.text for p in parts)
            stream = c.astream_generate(MODEL, "long", options={"num_predict": 10_000})
            first = await anext(stream)
            assert not first.done
            await stream.aclose()
            assert [p async for p in stream] == []

            async def read_all() -> None:
                async for _ in c.astream_chat(MODEL, "again"):
                    await asyncio.sleep(0)
            task = asyncio.ensure_future(read_all())
            await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

            # aclose() from another task ends a read that is waiting for the next chunk
            slow = c.astream_generate(MODEL, "slow", options={"num_predict": 10_000})
            await anext(slow)
            reader = asyncio.ensure_future(anext(slow, None))
            await asyncio.sleep(0)
            await slow.aclose()
            result = await reader  # None: the pending read was ended by aclose()
            assert (result is None or not result.done) and slow.closed
            assert [p async for p in slow] == []

    asyncio.run(run())
    _no_request_in_flight(node)  # every cut stream closed its upstream request


def test_a_sync_stream_is_cancelled_from_another_thread(emulator, pool_cluster) -> None:
    node = emulator(models=[MODEL], tokens_per_second=20, response_tokens=400)
    with pool_cluster([node.url]) as c:
        stream = c.stream_chat(MODEL, "long story")
        first = next(stream)
        assert not first.done
        stopper = threading.Timer(0.2, stream.close)
        stopper.start()
        rest = list(stream)  # ends when close() cancels the pending read
        stopper.join()
        assert len(rest) < 399 and not (rest and rest[-1].done)
        assert stream.closed
        # the node saw the connection go: nothing is left in flight, the lease came back
        reply = c.chat(MODEL, "short", options={"num_predict": 2})
        assert reply.text
    _no_request_in_flight(node)
    assert node.stats()["injected"]["client_gone"] == 1  # the node stopped generating


def test_tool_calls_and_structured_output(cluster) -> None:
    made, _node = cluster
    with made as c:
        called = c.chat(MODEL, "Weather in Oslo?", tools=[WEATHER])
        (call,) = called.tool_calls
        assert call["function"]["name"] == "get_weather"
        assert isinstance(call["function"]["arguments"]["city"], str)
        streamed = [p for p in c.stream_chat(MODEL, "Weather?", tools=[WEATHER])
                    if p.tool_calls]
        assert streamed and streamed[0].tool_calls[0]["function"]["name"] == "get_weather"
        structured = c.chat(MODEL, "rate it", format=SCHEMA)
        data = structured.json()
        assert isinstance(data["answer"], str) and isinstance(data["score"], int)
        plain = c.chat(MODEL, "hello")
        with pytest.raises(BackendError, match="not JSON"):
            plain.json()
        results = c.gather([sollol.Task.chat(MODEL, f"q{i}") for i in range(4)])
        assert all(r.ok for r in results) and c.capacity() >= 1


def test_remote_mode_takes_no_local_config() -> None:
    with pytest.raises(TypeError, match="gateway= alone"):
        sollol.Cluster(gateway="http://127.0.0.1:1", nodes=["x"])
    remote = sollol.Cluster(gateway="http://127.0.0.1:1")
    assert remote.remote and remote.runtime is None
    with remote as c, pytest.raises(BackendError, match="gateway"):
        c.chat(MODEL, "nobody listens on port 1")


def test_a_remote_gateway_with_access_keys(emulator, pool_gateway, monkeypatch) -> None:
    from sollol.core.access import new_key
    from sollol.errors import Unauthorized

    key = new_key()
    node = emulator(models=[MODEL])
    gateway = pool_gateway(node.address, api_keys=[{"name": "app", "key": key}])
    with sollol.Cluster(gateway=gateway.url, api_key=key) as c:
        assert c.chat(MODEL, "hi").text
        assert "".join(p.text for p in c.stream_chat(MODEL, "hi"))
    monkeypatch.setenv("SOLLOL_KEY", key)  # what SOLLOL's own clients send by default
    with sollol.Cluster(gateway=gateway.url) as c:
        assert c.generate(MODEL, "hi").text
    monkeypatch.delenv("SOLLOL_KEY")
    with sollol.Cluster(gateway=gateway.url) as c:
        with pytest.raises(Unauthorized):
            c.chat(MODEL, "no key")
        with pytest.raises(Unauthorized):
            list(c.stream_chat(MODEL, "no key"))
    with pytest.raises(TypeError, match="gateway="):
        sollol.Cluster(api_key=key)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0), max_size=10))
def test_chunks_do_not_depend_on_how_the_bytes_arrive(cuts: list[int]) -> None:
    raw = b'{"response": "a"}\n\n {"response": "b"} \n{"done": true, "eval_count": 2}'
    points = sorted({c % (len(raw) + 1) for c in cuts})
    pieces = [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]

    async def read(parts: list[bytes]) -> list[dict]:
        async def source():
            for part in parts:
                yield part
        return [dict(chunk.data) async for chunk in chunks(source())]

    assert asyncio.run(read(pieces)) == asyncio.run(read([raw])) == [
        {"response": "a"}, {"response": "b"}, {"done": True, "eval_count": 2}]
    with pytest.raises(BackendError, match="not JSON"):
        asyncio.run(read([b'{"response": "a"}\nnot json\n']))
    with pytest.raises(BackendError, match="boom"):
        asyncio.run(read([b'{"error": "boom"}\n']))
