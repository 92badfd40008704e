"""No client input makes the gateway answer 5xx, a non-JSON error, or log a traceback.

hypothesis generates request bodies, query strings and path names for every endpoint in
`sollol.gateway.route_table.ROUTES` (a new endpoint is covered without touching this file), in every
dialect and across translation: the pool holds an Ollama node and an OpenAI-compatible node,
and the bodies name models of both. In-process over ASGI for speed, and a smaller run over HTTP.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sollol.forwarding.validate import validate
from sollol.gateway.route_table import ROUTES, Route, dialect
from sollol.testing.asgi_client import OLLAMA_MODELS, OPENAI_MODEL
from sollol.testing.hostile import body_bytes, path_names, query_strings

MODELS = [*OLLAMA_MODELS, OPENAI_MODEL]
# Admin routes add and remove pool nodes at addresses named in the body: fuzzing them would
# make the gateway probe arbitrary (non-loopback) addresses and drop this test's own nodes.
# `/sollol/stream` (the dashboard's live events) never ends: a client reading it whole waits for
# ever, so it is left out (tests/test_observe_*.py cover it).
ENDLESS = {"/sollol/stream"}
TABLE = [route for route in ROUTES if route.kind != "admin" and route.path not in ENDLESS]
EVERY = [pytest.param(served, method, id=f"{method} {served.path}")
         for served in TABLE for method in served.methods]
WITH_BODY = [p for p in EVERY if p.values[1] not in ("GET", "HEAD")]
WITHOUT_BODY = [p for p in EVERY if p.values[1] in ("GET", "HEAD")]
# The last event of a complete stream: OpenAI chat/completions, Responses, Anthropic messages.
STREAM_ENDS = (b"data: [DONE]", b"response.completed", b"response.incomplete", b"message_stop")
FUZZ = settings(suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])


def requests_for(served: Route) -> st.SearchStrategy[tuple[str, str, bytes | None]]:
    """(path, query, body) for one endpoint: bodies where it takes one, queries and names."""
    path = st.just(served.path)
    if served.prefix:
        path = path_names(MODELS).map(lambda name: served.path + name)
    body: st.SearchStrategy[bytes | None] = st.none()
    if any(method not in ("GET", "HEAD") for method in served.methods):
        body = body_bytes(MODELS)
    return st.tuples(path, query_strings(), body)


def check_reply(path: str, reply: httpx.Response, routed: bool) -> None:
    # (reply.request.url.path: httpx resolves `..` in a generated name before sending)
    """2xx, or a 4xx whose body is the client dialect's JSON error; streams carry no error."""
    where = f"{reply.request.method} {path} -> {reply.status_code}: {reply.content[:300]!r}"
    # 501: no route offers a capability the request needs (images, tools: docs/gateway.md), a
    # refusal about the cluster rather than a failure; it is checked like the 4xx below.
    assert reply.status_code < 500 or reply.status_code == 501, where
    if reply.request.method == "HEAD":
        assert not reply.content, where
        return
    if reply.status_code >= 400:
        assert reply.headers["content-type"].startswith("application/json"), where
        error = reply.json()["error"]
        if dialect(path) in ("openai", "anthropic"):
            assert isinstance(error["message"], str), where
        else:
            assert isinstance(error, str), where
        return
    kind = reply.headers.get("content-type", "")
    if routed and kind.startswith("application/x-ndjson"):
        lines = [json.loads(line) for line in reply.content.splitlines() if line.strip()]
        assert lines and not any("error" in line for line in lines), where
        assert lines[-1].get("done") is True, where
    elif routed and kind.startswith("text/event-stream"):
        for error in (b'data: {"error"', b"event: error", b'"type": "error"', b"response.failed"):
            assert error not in reply.content, where
        last = reply.content.rstrip().rsplit(b"\n\n", 1)[-1]
        assert any(end in last for end in STREAM_ENDS), where
    elif kind.startswith("application/json"):
        reply.json()


# (before the generated requests below, which may delete the fixture's models)
@pytest.mark.parametrize(("body", "expected"), [
    (b'{"model": "llama3.2:1b", "prompt": "x", "options": {"temperature": NaN}}',
     "NaN is not a JSON number"),
    (b'{"model": "llama3.2:1b", "prompt": "x", "options": {"seed": Infinity}}',
     "Infinity is not a JSON number"),
    (b'{"model": "llama3.2:1b", "prompt": "x", "options": {"temperature": 1e400}}',
     "number 1e400 is out of range"),
    (b'{"model": "llama3.2:1b", "prompt": "x", "context": [' + b"9" * 5000 + b"]}",
     "4300 digits"),
    (b'{"model": "llama3.2:1b", "prompt": "x", "format": ' + b"[" * 65 + b"]" * 65 + b"}",
     "nested more than 64 deep"),
    (b'{"model": "llama3.2:1b", "prompt": "x", "format": ' + b"[" * 9999 + b"]" * 9999 + b"}",
     "nested more than 64 deep"),
    ('{"model": "llama3.2:1b", "prompt": "x"}'.encode("utf-16"), "not UTF-8"),
    (b'{"model": "llama3.2:1b", "prompt": "\xed\xa0\x80"}', "not UTF-8"),
])
def test_what_python_accepts_but_json_does_not_is_a_400(asgi_pool, body, expected) -> None:
    reply = asgi_pool.request("POST", "/api/generate", body=body)
    assert reply.status_code == 400
    assert expected in reply.json()["error"]


@pytest.mark.parametrize("model", [OPENAI_MODEL, OLLAMA_MODELS[0]])
def test_lone_surrogates_become_replacement_characters_as_in_ollama(asgi_pool, model) -> None:
    message = {"role": "user", "content": "cut \ud83d here, kept \ud83d\ude00"}
    body = json.dumps({"model": model, "stream": False, "messages": [message]}).encode()
    forwarded = validate("ollama", "chat", body).raw  # what goes upstream when dialects match
    assert json.loads(forwarded)["messages"][0]["content"] == "cut \ufffd here, kept \U0001f600"
    reply = asgi_pool.request("POST", "/api/chat", body=body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["done"] is True


@pytest.mark.parametrize(("served", "method"), WITH_BODY)
@FUZZ
@given(data=st.data())
def test_hostile_bodies_get_a_2xx_or_a_json_4xx(asgi_pool, served, method, data) -> None:
    hostile_request(asgi_pool, served, method, data)


@pytest.mark.parametrize(("served", "method"), WITHOUT_BODY)
@settings(FUZZ, max_examples=50)  # only a query string and a name vary
@given(data=st.data())
def test_hostile_queries_get_a_2xx_or_a_json_4xx(asgi_pool, served, method, data) -> None:
    hostile_request(asgi_pool, served, method, data)


def hostile_request(asgi_pool, served: Route, method: str, data: st.DataObject) -> None:
    path, query, body = data.draw(requests_for(served))
    reply = asgi_pool.request(method, path, body=body, query=query)
    event(f"HTTP {reply.status_code}")
    check_reply(reply.request.url.path, reply, routed=served.kind == "dispatch")
    assert not asgi_pool.errors, asgi_pool.errors[0].getMessage()


@pytest.mark.parametrize("path", [s.path for s in TABLE if not s.prefix])
def test_a_wrong_method_is_a_json_405(asgi_pool, path) -> None:
    served = next(s for s in TABLE if s.path == path)
    method = "PUT" if "PUT" not in served.methods else "PATCH"
    reply = asgi_pool.request(method, path, body=b"{}")
    assert reply.status_code == 405
    check_reply(path, reply, routed=False)


def test_hostile_requests_over_real_http(emulator, scripted_node, pool_gateway) -> None:
    """The same over a socket through uvicorn and httptools (fewer examples: slower)."""
    node = emulator(models=list(OLLAMA_MODELS))
    openai = scripted_node(api="openai", models=(OPENAI_MODEL,))
    gateway = pool_gateway(node.url, "openai://" + openai.url.removeprefix("http://"))
    route = gateway.gateway.cluster.routes["pool"]
    while len(route.state().healthy) < 2:  # the first probes run at start-up
        time.sleep(0.05)

    @settings(FUZZ, max_examples=100)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        served, method = data.draw(st.sampled_from([p.values for p in EVERY]))
        path, query, body = data.draw(requests_for(served))
        reply = httpx.request(method, gateway.url + path + (f"?{query}" if query else ""),
                              content=body, timeout=120)
        check_reply(reply.request.url.path, reply, routed=served.kind == "dispatch")

    run()


def test_the_routes_left_out_exist() -> None:
    """Guard: a renamed endless route must be renamed here, not fuzzed into a hang."""
    assert {r.path for r in ROUTES} >= ENDLESS
