"""Every routed endpoint is named in the access log, the dashboard's rows and `RouteEvent` by one
table (`sollol.forwarding.calls.PATHS`): its path less `/api/` or `/v1/` (issue 26: `/api/show`
was logged as `chat`)."""

from __future__ import annotations

import io
import json
import time

import httpx
import pytest

from sollol.forwarding.calls import PATHS, endpoint_name
from sollol.gateway import route_table
from sollol.gateway.access_log import AccessLog

MSG = [{"role": "user", "content": "hi"}]
BODIES = {
    "/api/generate": {"prompt": "hi", "stream": False},
    "/api/chat": {"messages": MSG, "stream": False},
    "/api/embed": {"input": "hi"},
    "/api/embeddings": {"prompt": "hi"},
    "/api/show": {},
    "/v1/chat/completions": {"messages": MSG},
    "/v1/completions": {"prompt": "hi"},
    "/v1/embeddings": {"input": "hi"},
    "/v1/responses": {"input": "hi"},
    "/v1/messages": {"max_tokens": 8, "messages": MSG},
    "/v1/messages/count_tokens": {"messages": MSG},
}
"""A minimal request for each routed path (a new one fails the first test until added)."""


def test_the_route_table_serves_exactly_the_named_endpoints():
    dispatched = {r.path: (r.api, r.op) for r in route_table.ROUTES if r.kind == "dispatch"}
    assert dispatched == {path: key for key, path in PATHS.items()}
    assert set(dispatched) == set(BODIES)
    names = [f"{api}/{endpoint_name(api, op)}" for api, op in PATHS]
    assert len(set(names)) == len(names)  # no two endpoints share a name
    assert endpoint_name("ollama", "show") == "show"
    assert endpoint_name("openai", "chat") == "chat/completions"


@pytest.fixture
def logged_gateway(emulator, pool_gateway):
    node = emulator(models=["tiny"])
    gw = pool_gateway(node.address, health_interval=0.5)
    log = io.StringIO()
    gw.gateway.cluster.pm.register(AccessLog("json", log), name="test-access-log")
    deadline = time.monotonic() + 30
    while not httpx.get(gw.url + "/api/tags").json()["models"]:
        assert time.monotonic() < deadline, "the node never became healthy"
        time.sleep(0.05)
    return gw, log


def test_every_routed_endpoint_is_logged_by_its_name(logged_gateway):
    gw, log = logged_gateway
    for path, body in BODIES.items():
        reply = httpx.post(gw.url + path, json={"model": "tiny", **body}, timeout=30)
        assert reply.status_code == 200, (path, reply.text)
    deadline = time.monotonic() + 30
    while len(log.getvalue().splitlines()) < len(BODIES):
        assert time.monotonic() < deadline, log.getvalue()
        time.sleep(0.02)
    lines = [json.loads(line) for line in log.getvalue().splitlines()]
    assert [f"{e['api']}/{e['endpoint']}" for e in lines] == [
        f"{route_table.find(path).api}/{path.split('/', 2)[2]}" for path in BODIES]
    rows = httpx.get(gw.url + "/sollol/events").json()["events"]
    assert sorted(e["endpoint"] for e in rows) == sorted(e["endpoint"] for e in lines)
