"""Nodes that echo their own key in an error (`Incorrect API key provided: Bearer sk-...`, as
OpenAI-style servers and proxies do): the key never reaches a client or a record. Three scripted
nodes (an Ollama one with a Bearer key, an OpenAI-compatible one behind Basic auth, and one whose
health probe is refused with its key in the body) answer every request with the echo; requests in
every dialect, streamed and not, and model management go through the gateway; then every
response, `/sollol/state`, `/sollol/events`, `/sollol/nodes`, the event stream, both access-log
formats and the log are searched for every form of every key."""

from __future__ import annotations

import base64
import io
import json
import logging

import httpx

from sollol.core.runtime import ClusterRuntime
from sollol.gateway import GatewayThread
from sollol.gateway.access_log import AccessLog
from sollol.testing.echo_node import authorization, echo_script

BEARER_KEY = "sk-bearer-0123456789abcdef"
BASIC_USER, BASIC_PASSWORD = "ops", "basic-pass-0123456789"
DOWN_KEY = "sk-down-node-9876543210"
BASIC_TOKEN = base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()
STREAM_KEY = "sk-stream-node-5555555555"
SECRETS = (BEARER_KEY, BASIC_PASSWORD, BASIC_TOKEN, DOWN_KEY, STREAM_KEY,
           f"{BASIC_USER}:{BASIC_PASSWORD}")
MESSAGES = [{"role": "user", "content": "hi"}]


def echo(request):
    """An error quoting the key the request carried, in each form."""
    sent = authorization(request)
    token = sent.partition(" ")[2]
    decoded = base64.b64decode(token).decode() if sent.startswith("Basic ") else ""
    message = f"Incorrect API key provided: {sent} ({token}; {decoded})"
    return 401, {"error": {"message": message, "type": "invalid_request_error",
                           "code": "invalid_api_key"}}


def requests_for(model: str) -> list[tuple[str, str, dict]]:
    out = []
    for stream in (False, True):
        out += [("POST", "/api/chat", {"model": model, "messages": MESSAGES, "stream": stream}),
                ("POST", "/api/generate", {"model": model, "prompt": "x", "stream": stream}),
                ("POST", "/v1/chat/completions", {"model": model, "messages": MESSAGES,
                                                  "stream": stream}),
                ("POST", "/v1/completions", {"model": model, "prompt": "x", "stream": stream}),
                ("POST", "/v1/responses", {"model": model, "input": "x", "stream": stream}),
                ("POST", "/v1/messages", {"model": model, "max_tokens": 5, "messages": MESSAGES,
                                          "stream": stream})]
    out += [("POST", "/api/embed", {"model": model, "input": "x"}),
            ("POST", "/api/embeddings", {"model": model, "prompt": "x"}),
            ("POST", "/v1/embeddings", {"model": model, "input": "x"}),
            ("POST", "/api/show", {"model": model})]
    return out


MANAGEMENT = [("POST", "/api/pull", {"model": "fresh"}), ("POST", "/api/pull",
                                                           {"model": "fresh", "stream": False}),
              ("POST", "/api/push", {"model": "bearer-m", "stream": False}),
              ("POST", "/api/create", {"model": "made", "from": "bearer-m", "stream": False}),
              ("POST", "/api/copy", {"source": "bearer-m", "destination": "c"}),
              ("DELETE", "/api/delete", {"model": "bearer-m"})]


def leaks(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


def test_a_node_echoing_its_key_never_hands_it_to_anyone(hostile_node, isolated_config,
                                                          caplog):
    bearer = hostile_node(echo_script(echo, models=["bearer-m"]))
    basic = hostile_node(echo_script(echo, models=["basic-m"]))
    down = hostile_node(lambda request, writer: _refusing(request, writer))
    streamer = hostile_node(_streaming)
    nodes = [f"{BEARER_KEY}@{bearer.url[7:]}",
             f"openai://{BASIC_USER}:{BASIC_PASSWORD}@{basic.url[7:]}",
             f"{DOWN_KEY}@{down.url[7:]}", f"{STREAM_KEY}@{streamer.url[7:]}"]
    cluster = ClusterRuntime.from_config(overrides={
        "ollama_nodes": nodes, "model_sharding_enabled": False, "health_interval": 0.3})
    logs = {fmt: io.StringIO() for fmt in ("text", "json")}
    for fmt, stream in logs.items():
        cluster.pm.register(AccessLog(fmt, stream), name=f"access-{fmt}")
    seen: list[str] = []
    caplog.set_level(logging.DEBUG)
    with GatewayThread(cluster) as gw, httpx.Client(base_url=gw.url, timeout=60) as client:
        for method, path, body in [*requests_for("bearer-m"), *requests_for("basic-m"),
                                   *requests_for("stream-m"), *MANAGEMENT]:
            reply = client.request(method, path, json=body)
            seen.append(f"{method} {path} {reply.status_code} {reply.headers} {reply.text}")
            assert not leaks(seen[-1]), seen[-1]
        for path in ("/sollol/state", "/sollol/events", "/sollol/nodes", "/sollol/overview",
                     "/api/tags", "/api/ps", "/metrics"):
            reply = client.get(path)
            seen.append(f"GET {path} {reply.status_code} {reply.text}")
        with client.stream("GET", "/sollol/stream") as stream:
            for line in stream.iter_lines():
                seen.append(line)
                if sum(1 for s in seen if s.startswith("data:")) >= 3:
                    break
    records = "\n".join([*seen, logs["text"].getvalue(), logs["json"].getvalue(), caplog.text])
    assert not leaks(records), [line for line in records.splitlines() if leaks(line)][:5]
    # the nodes did echo: the gateway redacted, it did not just fail to relay
    assert "Incorrect API key provided: *** (***; )" in records  # the Bearer node
    assert "Incorrect API key provided: *** (***; ***)" in records  # the Basic one
    assert json.loads(logs["json"].getvalue().splitlines()[0])["status"] == 401
    assert any(authorization(r) == f"Bearer {BEARER_KEY}" for r in bearer.requests)
    assert any(authorization(r) == f"Basic {BASIC_TOKEN}" for r in basic.requests)


async def _streaming(request, writer) -> bool:
    """An Ollama node that starts every answer, then fails it quoting its key (mid-stream)."""
    from sollol.testing.echo_node import probe_answers
    from sollol.testing.hostile_node import chunked, response

    probes = probe_answers(["stream-m"])
    if request.method == "GET":
        writer.write(response(json.dumps(probes.get(request.path, {})).encode()))
    else:
        body = request.json() or {}
        start = {"model": "stream-m", "created_at": "2026-01-01T00:00:00Z", "done": False,
                 "message": {"role": "assistant", "content": "Hel"}, "response": "Hel"}
        error = {"error": f"upstream said: Incorrect API key provided: {authorization(request)}"}
        lines = [start, error] if body.get("stream", True) else [error]
        writer.write(chunked(b"".join(json.dumps(x).encode() + b"\n" for x in lines)))
    await writer.drain()
    return True


async def _refusing(request, writer) -> bool:
    """A node that refuses every call, health probes too, quoting its key."""
    from sollol.testing.hostile_node import response

    status, value = echo(request)
    writer.write(response(json.dumps(value).encode(), status))
    await writer.drain()
    return True
