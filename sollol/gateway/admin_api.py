"""Admin endpoints: pool nodes and rpc-servers join and leave, and the config is re-read.

    POST   /sollol/nodes          {"address": "10.0.0.5:11434"}  add a pool node
    DELETE /sollol/nodes/<id>                                    remove it; its requests finish
    POST   /sollol/rpc            {"address": "10.0.0.7:50052"}  add an rpc-server
    DELETE /sollol/rpc/<address>                                 remove it; coordinators drain
    POST   /sollol/reload                                        re-read config file and env

They are rows of the gateway's route table (kind "admin", sollol/gateway/route_table.py), served on
the same request path as every other `/sollol/` endpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from sollol.core.router import POOL, SHARDING
from sollol.dialects.jsonin import loads
from sollol.errors import NoRouteAvailable, RequestError
from sollol.gateway.asgi import Receive, Scope, Send, read_body, send_json

if TYPE_CHECKING:
    from sollol.core.runtime import ClusterRuntime

COLLECTIONS = {"/sollol/nodes": (POOL, "pool node", "the ollama_pool plugin"),
               "/sollol/rpc": (SHARDING, "rpc-server",
                               "model_sharding_enabled and the llamacpp_rpc plugin")}
RELOAD = "/sollol/reload"


async def handle(cluster: ClusterRuntime, scope: Scope, receive: Receive, send: Send,
                 max_body: int) -> None:
    """Serve one admin request (the route table matched its path and method)."""
    path, method = scope["path"], scope["method"]
    body = _body(await read_body(scope, receive, max_body))
    if path == RELOAD:
        report = await cluster.reload()
        await send_json(send, 200 if report.get("ok") else 400,
                        report if report.get("ok") else {"error": report["error"], **report})
        return
    collection = next(p for p in COLLECTIONS if path == p or path.startswith(p + "/"))
    route_name, what, needs = COLLECTIONS[collection]
    route = cluster.membership.members().get(route_name)
    if route is None:
        raise NoRouteAvailable(f"no {route_name} route is running to take a {what} "
                               f"(it needs {needs})")
    ident = unquote(path[len(collection) + 1:]) if path != collection else ""
    ident = ident or body.get("address") or ""
    if not isinstance(ident, str) or not ident.strip():
        raise RequestError(f"name the {what}: a JSON body {{\"address\": \"host:port\"}}")
    if method == "POST":
        result = await route.add_backend(ident.strip())
    else:
        result = await route.remove_backend(ident.strip())
    await send_json(send, 200, dict(result))


def _body(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        body = loads(raw.decode("utf-8", "replace"))
    except ValueError as exc:
        raise RequestError(f"invalid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    return body
