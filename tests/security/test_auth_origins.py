"""Browser-origin defences on the default loopback bind: `Host` checks against DNS rebinding,
`Origin` checks against other web sites (whatever the request's shape), and CORS only for
allowed origins."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sollol.config import load_config
from sollol.core.access import new_key
from sollol.errors import Forbidden, Unauthorized
from sollol.gateway.guard import Guard

PULL = b'{"model": "fresh"}'
CHAT = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": false}'
# What a page on another site can send without a preflight ("simple requests"): POST with
# text/plain, a form encoding or multipart; and what it can send after one (DELETE, JSON).
SIMPLE = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
ATTACKS = [("POST", "/api/pull", PULL), ("POST", "/api/create", b'{"model": "x", "from": "m"}'),
           ("POST", "/api/copy", b'{"source": "m", "destination": "stolen"}'),
           ("DELETE", "/api/delete", b'{"model": "m"}'), ("POST", "/api/generate",
                                                          b'{"model": "m", "prompt": "hi"}'),
           ("POST", "/api/chat", CHAT), ("POST", "/v1/chat/completions", CHAT),
           ("POST", "/api/embed", b'{"model": "m", "input": "x"}')]


# Pages on this machine are other sites too: allowed only when listed (a glob may list ports).
LISTED_LOOPBACK = ["http://localhost:3000", "http://127.0.0.1:*", "https://[::1]:5000",
                   "http://app.localhost"]


@pytest.fixture
def node(emulator):
    return emulator(models=["m"], library=["fresh"])


@pytest.fixture
def gw(node, pool_gateway):
    return pool_gateway(node.address, allowed_origins=["https://app.example.com",
                                                       "https://*.example.org", *LISTED_LOOPBACK],
                        allowed_hosts=["gw.lan", "*.corp.example"])


def upstream_requests(node) -> int:
    return sum(n for path, n in node.stats()["requests"].items()
               if path not in ("/api/version", "/api/tags", "/api/ps"))


@pytest.mark.parametrize("content_type", SIMPLE)
def test_a_page_on_another_site_cannot_drive_the_gateway(gw, node, content_type):
    before = upstream_requests(node)
    for origin in ("http://evil.example", "null", "https://app.example.com.evil.example",
                   "http://localhost.evil.example", "http://127.0.0.1.evil.example:80"):
        for method, path, body in ATTACKS:
            reply = httpx.request(method, gw.url + path, content=body,
                                  headers={"Origin": origin, "Content-Type": content_type})
            assert reply.status_code == 403, (origin, path, reply.text)
            assert "allowed_origins" in reply.text
            assert "access-control-allow-origin" not in reply.headers
    assert upstream_requests(node) == before  # nothing reached the node
    assert "stolen" not in str(node.stats())


def test_dns_rebinding_is_refused(gw, node):
    """A page at attacker.example whose name now resolves to 127.0.0.1: same-origin for the
    browser, so its GETs carry no Origin; the Host header gives it away."""
    before = upstream_requests(node)
    for host in ("attacker.example", "attacker.example:11435", "ATTACKER.example.",
                 "localhost.attacker.example", "corp.example", "127.0.0.1.nip.io"):
        for method, path, body in [("GET", "/api/tags", b""), ("GET", "/sollol/state", b""),
                                   *ATTACKS]:
            reply = httpx.request(method, gw.url + path, content=body, headers={"Host": host})
            assert reply.status_code == 403, (host, path)
            assert "DNS rebinding" in reply.text and "allowed_hosts" in reply.text
    assert upstream_requests(node) == before
    reply = httpx.get(gw.url + "/v1/models", headers={"Host": "attacker.example"})
    assert reply.json()["error"]["code"] == "permission_denied"


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:1", "app.localhost", "127.0.0.1",
                                  "127.0.0.2:80", "[::1]:11435", "10.0.0.5", "[fe80::1]",
                                  "gw.lan", "x.corp.example:8", ""])
def test_hosts_that_are_answered(gw, host):
    assert httpx.get(gw.url + "/api/tags", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("origin", ["http://localhost:3000", "http://127.0.0.1:8080",
                                    "https://[::1]:5000", "http://app.localhost",
                                    "https://app.example.com", "https://a.example.org"])
def test_allowed_origins_get_cors_headers_and_preflights(gw, origin):
    reply = httpx.post(gw.url + "/api/chat", content=CHAT, headers={"Origin": origin})
    assert reply.status_code == 200
    assert reply.headers["access-control-allow-origin"] == origin
    assert "origin" in reply.headers["vary"].lower()
    assert "x-sollol-route" in reply.headers["access-control-expose-headers"]
    preflight = httpx.options(gw.url + "/api/pull", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, authorization"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == origin
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-allow-headers"] == "content-type, authorization"


def test_refused_preflights_and_plain_requests_get_no_cors(gw):
    preflight = httpx.options(gw.url + "/api/pull", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 403
    assert not any(h.startswith("access-control") for h in preflight.headers)
    plain = httpx.post(gw.url + "/api/chat", content=CHAT)  # no Origin: not a browser page
    assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers


def test_a_valid_key_does_not_let_a_foreign_origin_in(node, pool_gateway):
    key = new_key()
    gw = pool_gateway(node.address, api_keys=[key], allowed_origins=["http://localhost:3000"])
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.post(gw.url + "/api/chat", content=CHAT, headers=headers).status_code == 200
    reply = httpx.post(gw.url + "/api/chat", content=CHAT,
                       headers={**headers, "Origin": "https://evil.example"})
    assert reply.status_code == 403
    preflight = httpx.options(gw.url + "/api/chat", headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 204  # browsers send preflights without credentials


def test_star_opens_the_checks():
    config = load_config(overrides={"allowed_hosts": ["*"], "allowed_origins": ["*"]})
    guard = Guard(config, "127.0.0.1")
    admitted = guard.admit("/api/chat", "POST", [(b"host", b"evil.example"),
                                                 (b"origin", b"https://evil.example")])
    assert admitted.origin == b"https://evil.example"


GUARD = Guard(load_config(overrides={"api_keys": [new_key()]}), "0.0.0.0")


@given(st.lists(st.tuples(st.sampled_from([b"host", b"origin", b"authorization",
                                           b"x-api-key", b"x-other"]),
                          st.binary(max_size=120)), max_size=6),
       st.sampled_from(["/", "/api/chat", "/sollol/state", "/v1/messages"]),
       st.sampled_from(["GET", "POST", "OPTIONS", "DELETE"]))
def test_any_headers_are_admitted_or_refused_never_crash(headers, path, method):
    try:
        GUARD.admit(path, method, headers)
    except (Forbidden, Unauthorized) as exc:
        assert exc.status in (401, 403) and str(exc)
    else:  # GUARD requires a key none of these carry: only `GET /` and preflights pass
        assert (path == "/" and method == "GET") or method == "OPTIONS"


def test_pages_the_gateway_serves_itself_are_same_origin(gw):
    """The dashboard, opened by a name in allowed_hosts: its requests carry that origin."""
    reply = httpx.post(gw.url + "/api/chat", content=CHAT,
                       headers={"Host": "gw.lan:8080", "Origin": "http://gw.lan:8080"})
    assert reply.status_code == 200
    other_port = httpx.post(gw.url + "/api/chat", content=CHAT,
                            headers={"Host": "gw.lan:8080", "Origin": "http://gw.lan:9999"})
    assert other_port.status_code == 403
    rebound = httpx.post(gw.url + "/api/chat", content=CHAT,  # same-origin, but a rebound name
                         headers={"Host": "evil.example", "Origin": "http://evil.example"})
    assert rebound.status_code == 403 and "DNS rebinding" in rebound.text
