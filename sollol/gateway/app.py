"""The gateway as a plain ASGI application built from a `ClusterRuntime`.

A raw ASGI app rather than a framework: the request path is a dict lookup, a body read and a
forward, and every layer skipped is latency saved (see docs/performance.md).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from sollol.core.redact import LogRedaction, Redactor, routes_redactor
from sollol.dialects.error_shapes import (
    error_body,
    error_code,
    error_status,
    retry_after,
    stream_error,
)
from sollol.errors import Forbidden, SollolError, Unauthorized
from sollol.forwarding.calls import Op
from sollol.forwarding.dispatch import Dispatcher, StreamReply
from sollol.forwarding.validate import validate
from sollol.gateway import admin_api as admin
from sollol.gateway import info, plugin_endpoints
from sollol.gateway import model_management as manage
from sollol.gateway import route_table as routes
from sollol.gateway.asgi import (
    DisconnectWatch,
    Receive,
    Scope,
    Send,
    read_body,
    redacting,
    route_headers,
    send_body,
    send_json,
)
from sollol.gateway.blobs import BlobSpool, SpoolLimits
from sollol.gateway.collector import TunedCollector
from sollol.gateway.guard import Guard, preflight_headers, request_header, with_cors
from sollol.gateway.monitor import Monitor
from sollol.models import Api

if TYPE_CHECKING:
    from sollol.core.runtime import ClusterRuntime

log = logging.getLogger("sollol.gateway")

ROOT_TEXT = b"Ollama is running"  # clients probe `GET /` for exactly this text
SHUTDOWN_MESSAGE = "the gateway is shutting down"


class Gateway:
    """ASGI app: Ollama and OpenAI endpoints over `cluster`, plus SOLLOL's own under /sollol/."""

    def __init__(self, cluster: ClusterRuntime, *, manage_cluster: bool = True,
                 tune_gc: bool = False, reload_on_sighup: bool = False,
                 bind_host: str | None = None, insecure: bool = False) -> None:
        self.cluster = cluster
        self.manage_cluster = manage_cluster
        self.tune_gc = tune_gc
        self.reload_on_sighup = reload_on_sighup and hasattr(signal, "SIGHUP")
        self._reloads: set[asyncio.Task[Any]] = set()
        self.dispatcher: Dispatcher | None = None
        self.max_body = int(cluster.config["max_body_bytes"])
        blob_dir = cluster.config["blob_dir"]
        self.blobs = BlobSpool(Path(blob_dir) if blob_dir else None,
                               SpoolLimits.from_config(cluster.config))
        self.in_progress = 0
        """Routed requests being served right now (queued ones included)."""
        self.monitor = Monitor(cluster, running=lambda: self.in_progress)
        self.guard = Guard(cluster.config, bind_host or cluster.config["gateway_host"])
        self._log_filter = LogRedaction(self._redactor)
        """Redacts node secrets from SOLLOL's log lines while the gateway runs."""
        self.insecure = insecure
        self.collector = TunedCollector()
        self.endpoints = plugin_endpoints.PluginEndpoints()
        """Plugins' endpoints (`sollol_gateway_endpoints`), collected at startup."""

    def _redactor(self) -> Redactor:
        """Every node secret the cluster's routes hold now (sollol/core/redact.py)."""
        return routes_redactor(self.cluster.routes.values())

    async def startup(self) -> None:
        """Start the cluster (unless someone else owns it) and the upstream connection pool."""
        if self.manage_cluster and not self.cluster.started:
            await self.cluster.start()
        try:
            self.endpoints = plugin_endpoints.PluginEndpoints.collect(self.cluster)
        except BaseException:
            if self.manage_cluster:  # the gateway will not serve: stop what started for it
                await self.cluster.stop()
            raise
        self.dispatcher = Dispatcher.create(self.cluster)
        await self.monitor.start()
        for handler in {*logging.getLogger("sollol").handlers, *logging.getLogger().handlers}:
            handler.addFilter(self._log_filter)
        if self.reload_on_sighup:  # `sollol run` only: a signal handler needs the main thread
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._sighup)
        if self.tune_gc:  # a process that only serves the gateway (sollol.gateway.collector)
            self.collector.start()

    def _sighup(self) -> None:
        log.info("SIGHUP: re-reading the config")
        task = asyncio.get_running_loop().create_task(self.cluster.reload())
        self._reloads.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._reloads.discard)

    async def shutdown(self) -> None:
        """Close the connection pool, then stop the cluster (plugin shutdown hooks run)."""
        if self.reload_on_sighup:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        for task in list(self._reloads):
            task.cancel()
        self.collector.stop()
        await self.monitor.stop()
        for handler in {*logging.getLogger("sollol").handlers, *logging.getLogger().handlers}:
            handler.removeFilter(self._log_filter)
        if self.dispatcher is not None:
            await self.dispatcher.close()
            self.dispatcher = None
        self.blobs.close()
        if self.manage_cluster:
            await self.cluster.stop()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("gateway failed to start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.shutdown()
                finally:
                    await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        route = routes.find(path, method)
        api = route.api if route is not None else routes.dialect(path)
        plugin = self.endpoints.find(path) if route is None else None
        guard = self.guard
        if guard.config is not self.cluster.config:  # reloaded: keys, hosts, origins may change
            guard = self.guard = guard.for_config(self.cluster.config, self.insecure)
        try:
            admitted = guard.admit(path, method, scope["headers"],
                                   public=plugin is not None and plugin.public,
                                   plugin_admin=plugin is not None and not plugin.public)
        except (Unauthorized, Forbidden) as exc:
            # No CORS headers on a refusal: the page that sent it must not read the answer.
            challenge = None
            if isinstance(exc, Unauthorized):
                scheme = b"Basic" if exc.browser else b"Bearer"
                challenge = [(b"www-authenticate", scheme + b' realm="sollol"')]
            await self._error(send, api, exc.status, str(exc), error_code(exc),
                              headers=challenge)
            return
        if admitted.origin is not None:
            if method == "OPTIONS":
                requested = request_header(scope["headers"], b"access-control-request-headers")
                await send_body(send, 204, b"", headers=preflight_headers(admitted.origin,
                                                                          requested))
                return
            send = with_cors(send, admitted.origin)
        if admitted.key is not None:
            scope["sollol.key"] = admitted.key  # info and manage filter models by its globs
        # node secrets a node echoed never reach the client: in errors, management, /sollol/*
        send = redacting(send, self._redactor,
                         errors_only=route is not None and route.kind in ("dispatch", "root"))
        try:
            if route is None and plugin is not None:
                if method not in plugin.methods:
                    await self._error(send, api, 405, f"{path} takes "
                                      f"{' or '.join(plugin.methods)}, not {method}")
                else:
                    await plugin_endpoints.handle(plugin, scope, receive, send, self.max_body)
            elif route is None:
                await self._error(send, api, 404, f"no such endpoint: {method} {path}")
            elif method not in route.methods:
                await self._error(send, api, 405,
                                  f"{path} takes {' or '.join(route.methods)}, not {method}")
            elif route.kind == "dispatch":
                assert route.op is not None
                await self._routed(route.api, route.op, scope, receive, send)
            elif route.kind == "root":
                await send_body(send, 200, ROOT_TEXT, b"text/plain; charset=utf-8",
                                head=method == "HEAD")
            elif route.kind == "manage":  # model management, fanned out by the pool route
                await manage.handle(self.cluster, scope, receive, send, self.max_body,
                                    self.blobs)
            elif route.kind == "blobs":
                await self.blobs.handle(scope, receive, send)
            elif route.kind == "monitor":  # metrics, the dashboard and its data
                await self.monitor.handle(scope, receive, send)
            elif route.kind == "admin":  # nodes and rpc-servers join and leave, reload
                await admin.handle(self.cluster, scope, receive, send, self.max_body)
            else:
                handler = info.GET_HANDLERS.get(path) or next(
                    h for prefix, h in info.PREFIX_HANDLERS.items() if path.startswith(prefix))
                await send_json(send, 200, await handler(self.cluster, scope),
                                head=method == "HEAD")
        except SollolError as exc:
            await self._fail(send, api, exc)

    async def _routed(self, api: Api, op: Op, scope: Scope, receive: Receive, send: Send) -> None:
        raw = await read_body(scope, receive, self.max_body)
        call = validate(api, op, raw)
        key = scope.get("sollol.key")
        if key is not None and key.limited:  # every model the request may reach is checked
            call = attrs.evolve(call, key=key)  # (sollol/core/scope.py, by the dispatcher)
        if self.dispatcher is None:
            await self._error(send, api, 503, "the gateway has not started (no lifespan startup)")
            return
        task = asyncio.current_task()
        assert task is not None
        watch = DisconnectWatch(task, receive)
        started = False
        reply = None
        self.in_progress += 1
        try:
            reply = await self.dispatcher.open(call)
            headers = route_headers(reply.route)
            if not isinstance(reply, StreamReply):
                watch.finishing = True
                await send_body(send, reply.status, reply.body, reply.content_type.encode(),
                                headers)
                return
            await send({"type": "http.response.start", "status": reply.status, "headers": [
                (b"content-type", reply.content_type.encode()), (b"cache-control", b"no-cache"),
                *headers]})
            started = True
            async for chunk in reply:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            watch.finishing = True
            await send({"type": "http.response.body", "body": b""})
        except asyncio.CancelledError:
            if watch.disconnected:
                task.uncancel()
                return  # nobody is listening; the finally below cuts the upstream request
            await self._tell_shutdown(send, api, started, reply)
            task.uncancel()  # the request is over and the client knows why: end it normally
            return  # (re-raising only made uvicorn log a traceback for every cut request)
        finally:
            self.in_progress -= 1
            watch.stop()
            if isinstance(reply, StreamReply):
                reason = "client disconnected" if watch.disconnected else SHUTDOWN_MESSAGE
                await reply.aclose(reason)

    async def _tell_shutdown(self, send: Send, api: Api, started: bool, reply: Any) -> None:
        """A request cut by shutdown: say so instead of just dropping the connection."""
        try:
            if started:
                at_start = reply.at_boundary if isinstance(reply, StreamReply) else True
                chunk = stream_error(api, f"stream cut: {SHUTDOWN_MESSAGE}", at_line_start=at_start)
                await send({"type": "http.response.body", "body": chunk})
            else:
                await self._error(send, api, 503, SHUTDOWN_MESSAGE, retry="5")
        except Exception:  # the connection may already be gone
            log.debug("could not tell the client about the shutdown", exc_info=True)

    async def _fail(self, send: Send, api: Api, exc: SollolError) -> None:
        await self._error(send, api, error_status(exc), str(exc), error_code(exc),
                          retry_after(exc), getattr(exc, "numbers", None))

    async def _error(self, send: Send, api: Api, status: int, message: str,
                     code: str | None = None, retry: str | None = None,
                     numbers: dict[str, Any] | None = None,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
        headers = [*(headers or ()), *([(b"retry-after", retry.encode())] if retry else ())]
        body = error_body(api, status, message, code, numbers)
        await send_body(send, status, body, headers=headers)
