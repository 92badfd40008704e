"""Bad input never reaches a backend and never yields a 500; errors come in each dialect's shape;
fields reach the backend untouched when the dialects match."""

from __future__ import annotations

import json

import httpx
import pytest

from sollol.errors import Overloaded
from sollol.testing.static_route import StaticRoute, Upstream

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def node(scripted_node):
    return scripted_node(api="ollama")


@pytest.fixture
def openai_node(scripted_node):
    return scripted_node(api="openai")


@pytest.fixture
def gw(node, openai_node, gateway):
    route = StaticRoute("pool", [Upstream("ollama-node", node.url, "ollama", ("m",)),
                                 Upstream("openai-node", openai_node.url, "openai", ("o",))])
    return gateway([route], max_body_bytes=4096)


BAD_OLLAMA = [
    (b"{not json", "invalid JSON"),
    (b"", "empty"),
    (b"[1, 2]", "JSON object"),
    (b'{"messages": []}', "model is required"),
    (b'{"model": 7, "messages": []}', "'model' must be a string"),
    (b'{"model": "m", "messages": "hi"}', "'messages' must be an array"),
    (b'{"model": "m", "messages": [{"content": "x"}]}', "messages[0].role"),
    (b'{"model": "m", "messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
    (b'{"model": "m", "messages": [], "stream": "yes"}', "'stream' must be a boolean"),
    (b'{"model": "m", "messages": [], "options": {"temperature": [1]}}', "options.temperature"),
    (b'{"model": "m", "messages": [], "options": 3}', "'options' must be an object"),
]


@pytest.mark.parametrize(("body", "expected"), BAD_OLLAMA)
def test_bad_ollama_requests_get_400_and_never_reach_a_backend(gw, node, body, expected):
    reply = httpx.post(gw.url + "/api/chat", content=body, timeout=30)
    assert reply.status_code == 400
    assert expected in reply.json()["error"]
    assert not node.requests


@pytest.mark.parametrize(("path", "body", "expected"), [
    ("/v1/chat/completions", b"{oops", "invalid JSON"),
    ("/v1/chat/completions", b'{"model": "o"}', "'messages' is required"),
    ("/v1/chat/completions", b'{"model": "o", "messages": [], "temperature": "hot"}',
     "'temperature' must be an integer or a number"),
    ("/v1/completions", b'{"model": "o", "prompt": [1.5]}', "'prompt'"),
    ("/v1/embeddings", b'{"model": "o", "input": {"a": 1}}', "'input'"),
])
def test_bad_openai_requests_get_openai_error_objects(gw, openai_node, path, body, expected):
    reply = httpx.post(gw.url + path, content=body, timeout=30)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert expected in error["message"] and error["type"] == "invalid_request_error"
    assert not openai_node.requests


def test_bodies_over_the_limit_get_413(gw, node):
    big = {"model": "m", "messages": [{"role": "user", "content": "x" * 5000}]}
    reply = httpx.post(gw.url + "/api/chat", json=big, timeout=30)
    assert reply.status_code == 413 and "max_body_bytes" in reply.json()["error"]

    def chunks():  # no Content-Length: the limit is enforced while reading
        yield b'{"model": "m", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}]}'

    reply = httpx.post(gw.url + "/v1/chat/completions", content=chunks(), timeout=30)
    assert reply.status_code == 413 and reply.json()["error"]["code"] == "request_too_large"
    assert not node.requests


def test_unknown_model_is_404_in_both_dialects(gw, node):
    reply = httpx.post(gw.url + "/api/generate", json={"model": "nope", "prompt": "x"})
    assert reply.status_code == 404 and "'nope' not found" in reply.json()["error"]
    reply = httpx.post(gw.url + "/v1/embeddings", json={"model": "nope", "input": "x"})
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "model_not_found"
    assert not node.requests


def test_unknown_paths_and_wrong_methods(gw):
    assert httpx.get(gw.url + "/api/nothing").status_code == 404
    assert httpx.get(gw.url + "/api/chat").status_code == 405
    assert httpx.post(gw.url + "/api/tags").status_code == 405
    assert httpx.get(gw.url + "/v1/nothing").json()["error"]["message"].startswith("no such")


def test_no_route_is_503_with_retry_after_naming_what_is_missing(gateway):
    gw = gateway([])  # no plugin provides the pool route
    reply = httpx.post(gw.url + "/api/chat", json={"model": "m", "messages": MESSAGES})
    assert reply.status_code == 503 and int(reply.headers["retry-after"]) >= 1
    assert "'pool' route" in reply.json()["error"]
    assert httpx.get(gw.url + "/api/tags").json() == {"models": []}
    assert httpx.get(gw.url + "/sollol/nodes").status_code == 503


class FullRoute(StaticRoute):
    async def acquire(self, request, *, backend=None, exclude=()):
        raise Overloaded("every node's queue is full (3 waiting)", retry_after=2.5)


def test_overloaded_route_gives_429_with_retry_after(gateway, node):
    gw = gateway([FullRoute("pool", [Upstream("n", node.url, "ollama", ("m",))])])
    reply = httpx.post(gw.url + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES})
    assert reply.status_code == 429 and reply.headers["retry-after"] == "3"
    assert reply.json()["error"]["type"] == "rate_limit_error"


def test_upstream_client_errors_pass_through_without_retry(emulator, gateway):
    first, second = emulator(models=["m"]), emulator(models=["m"])
    first.set_faults(error_status=400)
    route = StaticRoute("pool", [Upstream("a", first.url, "ollama", ("m",)),
                                 Upstream("b", second.url, "ollama", ("m",))])
    gw = gateway([route])
    reply = httpx.post(gw.url + "/api/chat", json={"model": "m", "messages": MESSAGES})
    assert reply.status_code == 400 and reply.headers["x-sollol-backend"] == "a"
    assert second.stats()["total"] == 0
    reply = httpx.post(gw.url + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES})
    assert reply.status_code == 400 and "message" in reply.json()["error"]  # translated shape


def test_every_field_reaches_a_same_dialect_backend_untouched(gw, node, openai_node):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi", "images": ["aGk="]}],
            "stream": False, "options": {"temperature": 0.1, "num_ctx": 8192, "seed": 3},
            "format": {"type": "object"}, "tools": [{"type": "function", "function": {
                "name": "f", "parameters": {}}}], "keep_alive": "10m", "think": True,
            "x_future_field": [1, {"a": None}]}
    raw = json.dumps(body).encode()
    reply = httpx.post(gw.url + "/api/chat", content=raw, timeout=30)
    assert reply.status_code == 200
    assert node.requests == [{"path": "/api/chat", "body": body}]
    openai_body = {"model": "o", "messages": MESSAGES, "logit_bias": {"1": -100},
                   "top_logprobs": 2, "user": "u", "custom_sampler": {"k": 1}}
    assert httpx.post(gw.url + "/v1/chat/completions", json=openai_body).status_code == 200
    assert openai_node.requests == [{"path": "/v1/chat/completions", "body": openai_body}]
