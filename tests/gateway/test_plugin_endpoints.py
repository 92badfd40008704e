"""Plugins serve HTTP endpoints on the gateway's port (`sollol_gateway_endpoints`): admin key
checks, public endpoints, methods, errors, prefixes, and paths that clash."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from sollol.core.access import hash_key, new_key
from sollol.errors import Overloaded, PluginError
from sollol.hookspecs import hookimpl
from sollol.models import GatewayEndpoint, HttpReply, HttpRequest

ADMIN, USER = new_key(), new_key()
KEYS = [{"name": "root", "hash": hash_key(ADMIN), "admin": True},
        {"name": "alice", "hash": hash_key(USER)}]


class EchoPlugin:
    """Two endpoints: a public one that echoes the request, an admin one under a prefix."""

    def __init__(self, paths: tuple[str, str] = ("/sollol/echo/open", "/sollol/echo/items/")):
        self.paths = paths
        self.seen: list[HttpRequest] = []

    @hookimpl
    def sollol_gateway_endpoints(self, register: Callable[[GatewayEndpoint], None],
                                 cluster: Any) -> None:
        async def echo(request: HttpRequest) -> HttpReply:
            self.seen.append(request)
            if request.body == b"busy":
                raise Overloaded("too busy", retry_after=3)
            return HttpReply(200, {"method": request.method, "body": request.body.decode(),
                                   "client": request.client, "query": request.query,
                                   "has_cluster": cluster is not None},
                             headers={"X-Echo": "yes"})

        async def item(request: HttpRequest) -> HttpReply:
            return HttpReply(201, {"item": request.path.rsplit("/", 1)[1]})

        register(GatewayEndpoint(self.paths[0], ("GET", "POST"), echo, public=True))
        register(GatewayEndpoint(self.paths[1], ("DELETE",), item, prefix=True))


def test_public_and_admin_plugin_endpoints(sollol_gateway: Callable[..., Any]) -> None:
    plugin = EchoPlugin()
    gateway = sollol_gateway(plugins=[], register=[plugin], api_keys=KEYS)
    with httpx.Client(base_url=gateway.url, trust_env=False) as client:
        reply = client.post("/sollol/echo/open?x=1", content=b"hello")  # public: no key
        assert reply.status_code == 200 and reply.headers["x-echo"] == "yes"
        assert reply.json() == {"method": "POST", "body": "hello", "client": "127.0.0.1",
                                "query": "x=1", "has_cluster": True}
        busy = client.post("/sollol/echo/open", content=b"busy")
        assert busy.status_code == 429 and busy.json() == {"error": "too busy"}
        assert busy.headers["retry-after"] == "3"
        wrong = client.put("/sollol/echo/open")
        assert wrong.status_code == 405 and "GET or POST" in wrong.json()["error"]
        assert client.delete("/sollol/echo/items/a").status_code == 401  # admin: a key needed
        user = client.delete("/sollol/echo/items/a", headers={"Authorization": f"Bearer {USER}"})
        assert user.status_code == 403 and "admin key" in user.json()["error"]
        admin = {"Authorization": f"Bearer {ADMIN}"}
        for form in ({}, {"Content-Type": "text/plain"}):  # what a page can make a browser send
            forged = client.delete("/sollol/echo/items/a", headers={**admin, **form})
            assert forged.status_code == 403 and "forgery" in forged.json()["error"]
        root = client.delete("/sollol/echo/items/a",
                             headers={**admin, "X-Requested-With": "sollol"})
        assert root.status_code == 201 and root.json() == {"item": "a"}
        posted = client.post("/sollol/echo/open", content=b"x",  # public: its own proofs
                             headers={"Content-Type": "text/plain"})
        assert posted.status_code == 200
        assert client.get("/sollol/echo/other").status_code == 401  # not served, still guarded
        rebound = client.get("/sollol/echo/open", headers={"Host": "evil.example"})
        assert rebound.status_code == 403  # the Host check applies to public endpoints too
    assert len(plugin.seen) == 3


@pytest.mark.parametrize("paths", [("/sollol/nodes", "/sollol/echo/x/"),
                                   ("/api/echo", "/sollol/echo/x/"),
                                   ("/sollol/echo/open", "/sollol/echo/no-slash")])
def test_a_plugin_path_that_clashes_or_is_malformed_stops_the_gateway(
    sollol_gateway: Callable[..., Any], paths: tuple[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(RuntimeError, match="failed to start"):
        sollol_gateway(plugins=[], register=[EchoPlugin(paths)])
    (failure,) = [r for r in caplog.records if r.getMessage() == "gateway failed to start"]
    assert failure.exc_info is not None and isinstance(failure.exc_info[1], PluginError)
    assert f"endpoint {paths[0]!r}" in str(failure.exc_info[1]) or \
        f"endpoint {paths[1]!r}" in str(failure.exc_info[1])


def test_two_plugins_registering_one_path_are_named(
    sollol_gateway: Callable[..., Any], caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(RuntimeError, match="failed to start"):
        sollol_gateway(plugins=[], register=[EchoPlugin(), EchoPlugin()])
    (failure,) = [r for r in caplog.records if r.getMessage() == "gateway failed to start"]
    assert "gateway endpoint '/sollol/echo/open' is registered by both plugin" in str(
        failure.exc_info[1])
