"""Model-management fan-out against a node that breaks its NDJSON progress: each part ends with an
error line naming the node (malformed lines, stalls, cut connections, endless lines) while an
honest node's part succeeds; a client that goes away cancels the fan-out on every node."""

from __future__ import annotations

import json

import httpx
import pytest

from sollol.testing.hostile_node import response

_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n")
_HEALTH = {"/api/version": {"version": "0.9.0"}, "/api/tags": {"models": []},
           "/api/ps": {"models": []}}


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def progress_node(hostile_node, *pieces: bytes, end: bool = False):
    """A node that answers health probes like Ollama and a pull/create with `pieces` (chunked);
    `end`: finish the body and close; otherwise keep the connection open, saying nothing more."""
    async def script(request, writer):
        if request.method == "GET":
            writer.write(response(json.dumps(_HEALTH.get(request.path, {})).encode()))
            await writer.drain()
            return True
        writer.write(_HEAD + b"".join(chunk(p) for p in pieces) + (b"0\r\n\r\n" if end else b""))
        await writer.drain()
        return not end  # stall: the server waits (reading) until the client closes

    return hostile_node(script)


STATUS = json.dumps({"status": "pulling manifest"}).encode() + b"\n"


@pytest.mark.parametrize(("pieces", "end", "error"), [
    ((STATUS, b"this is not json\n"), False, "not JSON"),
    ((STATUS, b"[1, 2, 3]\n"), False, "not a JSON object"),
    ((STATUS, b'"success"\n'), False, "not a JSON object"),
    ((STATUS,), False, "sent no progress line for 0.5s"),
    ((STATUS, b'{"status": "downloading", "completed": 1'), False, "sent no progress line"),
    ((STATUS, b"x" * (1024 * 1024 + 10)), False, "longer than 1048576 bytes"),
    ((STATUS,), True, "without success"),
    ((STATUS, json.dumps({"error": "e" * 5000}).encode() + b"\n"), False, "eee..."),
], ids=["not-json", "array", "string", "stall", "trickle", "endless-line", "cut", "long-error"])
def test_a_broken_node_ends_its_part_with_an_error_line(hostile_node, emulator, pool_gateway,
                                                          pieces, end, error):
    honest = emulator(models=["m"])
    bad = progress_node(hostile_node, *pieces, end=end)
    gw = pool_gateway(honest.address, bad.url, pool_manage_idle_timeout=0.5)
    nodes = [honest.address, bad.url]
    reply = httpx.post(gw.url + "/api/pull", json={"model": "m", "nodes": nodes}, timeout=120)
    events = [json.loads(line) for line in reply.text.splitlines()]
    errors = [e for e in events[:-1] if "error" in e]
    assert len(errors) == 1 and error in errors[0]["error"]
    bad_id = errors[0]["node"]
    assert bad_id != honest.address
    summary = events[-1]
    assert summary["nodes"][honest.address] == "success"
    assert error in summary["nodes"][bad_id] and bad_id in summary["error"]
    assert len(summary["error"]) < 2000  # a node cannot make the summary huge


def test_the_summary_alone_when_not_streaming(hostile_node, pool_gateway):
    bad = progress_node(hostile_node, STATUS, b"garbage\n")
    gw = pool_gateway(bad.url)
    reply = httpx.post(gw.url + "/api/pull", json={"model": "m", "nodes": [bad.url],
                                                   "stream": False}, timeout=120)
    assert reply.status_code == 502 and "not JSON" in reply.json()["error"]


def test_a_client_that_goes_away_cancels_the_fan_out(hostile_node, pool_gateway):
    bad = progress_node(hostile_node, STATUS)  # one line, then silence (far below the timeout)
    gw = pool_gateway(bad.url, pool_manage_idle_timeout=300)
    with httpx.Client(timeout=120) as client, \
            client.stream("POST", gw.url + "/api/pull",
                          json={"model": "m", "nodes": [bad.url]}) as reply:
        first = next(reply.iter_lines())
        assert json.loads(first)["status"] == "pulling manifest"
    pull = next(r for r in bad.requests if r.path == "/api/pull")
    assert bad.wait_closed_by_client(pull.connection)  # the node learned the client left


def test_copy_and_delete_survive_an_endless_or_broken_answer(hostile_node, pool_gateway):
    async def script(request, writer):
        if request.method == "GET":
            writer.write(response(json.dumps(_HEALTH.get(request.path, {})).encode()))
        else:  # an error body that never ends, then a cut
            writer.write(b"HTTP/1.1 500 X\r\nContent-Length: 9999999\r\n\r\n" + b"z" * 200_000)
        await writer.drain()
        return request.method == "GET"

    bad = hostile_node(script)
    gw = pool_gateway(bad.url)
    reply = httpx.post(gw.url + "/api/copy", json={"source": "a", "destination": "b",
                                                   "nodes": [bad.url]}, timeout=120)
    assert reply.status_code == 502
    assert bad.url.removeprefix("http://") in reply.json()["error"] or \
        bad.url in reply.json()["error"]
    assert len(reply.json()["error"]) < 2000
