"""How `sollol.Cluster` reaches its routes: in process (the gateway's own Dispatcher, no HTTP
server) or over HTTP to a remote SOLLOL gateway. Both take and give Ollama-shaped requests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import httpx

from sollol.client.fanout import capacity
from sollol.core.access import gateway_headers
from sollol.dialects.replies import error_message
from sollol.errors import (
    BackendError,
    Forbidden,
    ModelNotFound,
    NoRouteAvailable,
    Overloaded,
    RequestError,
    SollolError,
    Unauthorized,
)
from sollol.forwarding.dispatch import Dispatcher, StreamReply
from sollol.forwarding.validate import validate

if TYPE_CHECKING:
    from sollol.client.tasks import Op, Task
    from sollol.core.runtime import ClusterRuntime

_ERRORS: dict[int, type[SollolError]] = {400: RequestError, 401: Unauthorized,
                                         403: Forbidden, 404: ModelNotFound,
                                         429: Overloaded, 503: NoRouteAvailable}
_PATHS = {"chat": "/api/chat", "generate": "/api/generate", "embed": "/api/embed"}
Sent = tuple[int, bytes, dict[str, str]]
"""An answer: HTTP status, body, and where it was routed (route, backend, policy, reason)."""


def raise_for(status: int, body: bytes, model: str) -> None:
    """Raise the SOLLOL error for an error status (RequestError, ModelNotFound, ...)."""
    if status >= 400:
        error = _ERRORS.get(status, BackendError)
        raise error(f"{model}: HTTP {status}: {error_message(body)}")


class InProcess:
    """The routes run in this process: requests go through the gateway's Dispatcher."""

    def __init__(self, runtime: ClusterRuntime, max_retries: int) -> None:
        self.runtime = runtime
        self.max_retries = max_retries
        self.dispatcher: Dispatcher | None = None
        self._owns_runtime = False

    async def open(self) -> None:
        if not self.runtime.started:
            await self.runtime.start()
            self._owns_runtime = True
        self.dispatcher = Dispatcher.create(self.runtime, max_retries=self.max_retries)

    async def close(self) -> None:
        try:
            if self.dispatcher is not None:
                await self.dispatcher.close()
        finally:
            self.dispatcher = None
            if self._owns_runtime:
                self._owns_runtime = False
                await self.runtime.stop()

    def _require(self) -> Dispatcher:
        if self.dispatcher is None:
            raise RuntimeError("this sollol.Cluster is stopped")
        return self.dispatcher

    async def send(self, op: Op, body: dict[str, Any]) -> Sent:
        call = validate("ollama", op, json.dumps(body).encode())
        reply = await self._require().open(call)
        if isinstance(reply, StreamReply):  # a whole reply was asked for; never expected
            await reply.aclose("the library asked for a whole reply")
            raise BackendError("the backend streamed a reply that was asked for whole")
        return reply.status, reply.body, dict(reply.route)

    async def stream(self, op: Op, body: dict[str, Any],
                     route: MutableMapping[str, str]) -> AsyncIterator[bytes]:
        call = validate("ollama", op, json.dumps(body).encode())
        reply = await self._require().open(call)
        route.update(reply.route)
        if not isinstance(reply, StreamReply):  # an error, or a reply the node did not stream
            raise_for(reply.status, reply.body, call.request.model)
            yield reply.body
            return
        try:
            async for piece in reply:
                yield piece
        finally:  # read to the end, stopped, or cancelled: the lease goes back either way
            await reply.aclose("the caller stopped reading the stream")

    async def capacity(self, tasks: Iterable[Task]) -> int:
        return await capacity(self.runtime, tasks)


class RemoteGateway:
    """A SOLLOL gateway elsewhere: the same requests over HTTP (its routing, its failover)."""

    def __init__(self, url: str, timeout: float = 300.0, api_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        # the gateway's access key: given, or $SOLLOL_KEY (as SOLLOL's CLI commands send it)
        self.headers = gateway_headers(api_key)
        self.client: httpx.AsyncClient | None = None

    async def open(self) -> None:
        # no proxy from the environment: a gateway is usually on the local network
        self.client = httpx.AsyncClient(base_url=self.url, trust_env=False, headers=self.headers,
                                        timeout=httpx.Timeout(self.timeout, connect=10.0))

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            await client.aclose()

    def _require(self) -> httpx.AsyncClient:
        if self.client is None:
            raise RuntimeError("this sollol.Cluster is stopped")
        return self.client

    async def send(self, op: Op, body: dict[str, Any]) -> Sent:
        try:
            reply = await self._require().post(_PATHS[op], json=body)
        except httpx.HTTPError as exc:
            raise BackendError(f"gateway {self.url}: {type(exc).__name__}: {exc}") from None
        return reply.status_code, reply.content, _route(reply.headers)

    async def stream(self, op: Op, body: dict[str, Any],
                     route: MutableMapping[str, str]) -> AsyncIterator[bytes]:
        try:
            async with self._require().stream("POST", _PATHS[op], json=body) as reply:
                route.update(_route(reply.headers))
                if reply.status_code >= 400:
                    raise_for(reply.status_code, await reply.aread(), str(body.get("model")))
                async for piece in reply.aiter_raw():
                    yield piece
        except httpx.HTTPError as exc:
            raise BackendError(f"gateway {self.url}: {type(exc).__name__}: {exc}") from None

    async def capacity(self, tasks: Iterable[Task]) -> int:
        """What the gateway's `/api/status` reports its routes take at once."""
        try:
            status = (await self._require().get("/api/status")).json()
            routes = status.get("routes") or {}
            return max(1, sum(int(r.get("capacity") or 0) for r in routes.values()))
        except (httpx.HTTPError, ValueError, AttributeError, TypeError):
            return 1


def _route(headers: httpx.Headers) -> dict[str, str]:
    route = {name: unquote(headers.get(f"x-sollol-{name}", ""))
             for name in ("route", "backend", "policy", "reason")}
    if headers.get("x-sollol-fallback"):  # a fallback model served it
        route["fallback"] = unquote(headers["x-sollol-fallback"])
        route["requested"] = unquote(headers.get("x-sollol-requested-model", ""))
    return route
