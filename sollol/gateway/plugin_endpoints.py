"""Endpoints plugins serve on the gateway's port (`sollol_gateway_endpoints`).

The gateway looks here only for paths its own route table does not serve. A plugin endpoint
gets the whole body (bounded by `max_body_bytes`) as an `HttpRequest` and answers with an
`HttpReply` (JSON); a SollolError it raises becomes the usual `{"error": ...}` answer.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import attrs

from sollol.core.plugin_manager import collect_named
from sollol.errors import PluginError
from sollol.gateway import route_table
from sollol.gateway.asgi import Receive, Scope, Send, read_body, send_body
from sollol.models import GatewayEndpoint, HttpReply, HttpRequest

if TYPE_CHECKING:
    from sollol.core.runtime import ClusterRuntime

PREFIX = "/sollol/"


def _check(endpoint: GatewayEndpoint, plugin: str) -> None:
    path = endpoint.path
    if not path.startswith(PREFIX) or path == PREFIX:
        msg = f"plugin {plugin!r} endpoint {path!r}: plugin paths must be under {PREFIX}"
        raise PluginError(msg)
    if endpoint.prefix and not path.endswith("/"):
        msg = f"plugin {plugin!r} endpoint {path!r}: a prefix endpoint's path ends with '/'"
        raise PluginError(msg)
    if route_table.find(path) is not None:
        msg = f"plugin {plugin!r} endpoint {path!r}: the gateway serves that path itself"
        raise PluginError(msg)


@attrs.frozen
class PluginEndpoints:
    """The endpoints every enabled plugin registered for one gateway."""

    exact: dict[str, GatewayEndpoint] = attrs.field(factory=dict)
    prefixes: tuple[GatewayEndpoint, ...] = ()

    @classmethod
    def collect(cls, cluster: ClusterRuntime) -> PluginEndpoints:
        """Ask the plugins (duplicates and paths the gateway serves are PluginErrors)."""
        found = collect_named(cluster.pm, "sollol_gateway_endpoints", "gateway endpoint",
                              key=lambda e: e.path, cluster=cluster)
        for endpoint, plugin in found.values():
            _check(endpoint, plugin)
        items = [endpoint for endpoint, _ in found.values()]
        # longest prefix first, so `/sollol/x/y/` wins over `/sollol/x/`
        prefixes = sorted((e for e in items if e.prefix), key=lambda e: -len(e.path))
        return cls({e.path: e for e in items if not e.prefix}, tuple(prefixes))

    def find(self, path: str) -> GatewayEndpoint | None:
        endpoint = self.exact.get(path)
        if endpoint is not None:
            return endpoint
        return next((e for e in self.prefixes if path.startswith(e.path)), None)


async def handle(endpoint: GatewayEndpoint, scope: Scope, receive: Receive, send: Send,
                 max_body: int) -> None:
    """Serve one request with a plugin's endpoint (its methods were checked by the caller)."""
    limit = max_body if endpoint.max_body is None else min(max_body, endpoint.max_body)
    body = await read_body(scope, receive, limit)
    headers = {name.decode("latin-1").lower(): value.decode("latin-1")
               for name, value in scope["headers"]}
    client = scope.get("client") or ("", 0)
    request = HttpRequest(scope["method"], scope["path"], body, headers, str(client[0]),
                          scope.get("query_string", b"").decode("latin-1"))
    reply = await endpoint.handler(request)
    if not isinstance(reply, HttpReply):
        msg = f"endpoint {endpoint.path!r} answered {type(reply).__name__}, not an HttpReply"
        raise PluginError(msg)
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1"))
             for k, v in reply.headers.items()]
    await send_body(send, reply.status, json.dumps(reply.body).encode(), headers=extra)
