"""Forward one request: decide its route, lease an upstream, send it in the backend's dialect.

Retries happen only before the first byte reaches the client: a connect error, a timeout or a
5xx on one backend sends the request to another (at most `max_retries` more). After the first
byte a failure ends the stream with an error object in the client's dialect; so does a stream
that stalls for `stream_idle_timeout` seconds between chunks. Every lease is
released once with an `Outcome`, and every request is recorded as a `RouteEvent`.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING

import attrs

from sollol.core import capabilities
from sollol.core.aliases import Alias, targets
from sollol.dialects.error_shapes import error_body
from sollol.dialects.replies import error_message, load_reply, show_from_info
from sollol.dialects.translate import (
    JSON_TYPE,
    STREAM_TYPES,
    Plan,
    convert_error,
    convert_reply,
    falls_back,
    new_stream,
    plan,
    prompt_tokens_in,
    tokens_in,
)
from sollol.errors import BackendError, ModelNotFound, NoRouteAvailable, Overloaded, SollolError
from sollol.forwarding.calls import Call, Op
from sollol.forwarding.reply import NETWORK_ERRORS as _NETWORK_ERRORS
from sollol.forwarding.reply import Reply, StreamReply
from sollol.forwarding.reply import describe_error as _describe
from sollol.forwarding.upstream import ConnectFailed, UpstreamPool, UpstreamResponse
from sollol.models import RouteDecision, RouteEvent
from sollol.routes import Lease, Outcome

if TYPE_CHECKING:
    from sollol.core.runtime import ClusterRuntime

__all__ = ["Call", "Dispatcher", "Op", "Reply", "StreamReply"]
FALLBACK_STATUSES = frozenset({429, 500, 502, 503, 504})
"""Replies after which the next fallback model is tried (unavailable or overloaded)."""
@attrs.define
class _Failure:
    """An attempt that failed before the first byte; `reply` is the upstream's error, if any."""

    message: str
    reply: Reply | None = None
    kind: str = "network"
    """For metrics: "connect", "timeout", "http_5xx" or "network"."""


@attrs.define
class _Trace:
    """Where one request's time went, for its RouteEvent (metrics and the dashboard)."""

    started: float = attrs.field(factory=time.perf_counter)
    wait_s: float = 0.0
    upstream_s: float = 0.0
    ttft_s: float | None = None
    prompt_tokens: int | None = None
    failovers: list[str] = attrs.field(factory=list)


@attrs.define
class Dispatcher:
    """Sends calls upstream for one cluster over one pool of keep-alive connections."""

    cluster: ClusterRuntime
    pool: UpstreamPool
    max_retries: int = 2
    stream_idle_timeout: float = 60.0

    @classmethod
    def create(cls, cluster: ClusterRuntime, *, max_retries: int = 2) -> Dispatcher:
        """A dispatcher with its own connection pool (no Accept-Encoding is sent: upstream
        bytes are forwarded as they come, so they must be plain)."""
        pool = UpstreamPool(connect_timeout=float(cluster.config["connect_timeout"]),
                            max_reply=int(cluster.config["max_reply_bytes"]))
        return cls(cluster=cluster, pool=pool, max_retries=max_retries,
                   stream_idle_timeout=float(cluster.config["stream_idle_timeout"]))

    async def close(self) -> None:
        await self.pool.close()

    async def open(self, call: Call) -> Reply:
        """Route and send `call` (through its alias, then its fallbacks, before the first byte
        only); raise SollolError when no backend could take it."""
        chain = targets(self.cluster.config, call.request.model)
        failures: list[str] = []
        for index, target in enumerate(chain):
            last = index == len(chain) - 1
            attempt = call if target.model == call.request.model else retarget(call, target.model)
            try:
                reply = await self._open(attempt, target.alias)
            except (ModelNotFound, NoRouteAvailable, Overloaded) as exc:
                if last:
                    if failures:
                        exc.args = (f"{exc} (after trying {'; '.join(failures)})",)
                    raise
                failures.append(f"{target.name}: {exc}")
                continue
            if not last and reply.status in FALLBACK_STATUSES:
                failures.append(f"{target.name}: HTTP {reply.status}")
                continue
            if index:
                reply.route = {**reply.route, "fallback": target.name,
                               "requested": call.request.model}
            return reply
        raise AssertionError("targets() always names the requested model")  # pragma: no cover

    async def _open(self, call: Call, alias: Alias | None) -> Reply:
        """Route and send `call` for one model (an alias may fix its route or nodes)."""
        trace = _Trace()
        try:
            if alias is not None and (alias.route or alias.nodes):
                decision = await self.cluster.decide_for_alias(call.request, alias)
            else:
                decision = await self.cluster.decide(call.request)
        except SollolError as exc:
            self._record(call, None, None, int(getattr(exc, "status", 500)), trace, 0, str(exc))
            raise
        outside = self.cluster.outside(alias) if alias is not None and alias.nodes else []
        tried: list[str] = []
        failures: list[str] = []
        last_kind = ""
        last: Reply | None = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(self.cluster.config["request_timeout"])
        try:
            while len(tried) <= self.max_retries and loop.time() < deadline:
                waited = time.perf_counter()
                try:
                    lease = await self.cluster.acquire(call.request, decision,
                                                       exclude=[*tried, *outside])
                except SollolError as exc:
                    trace.wait_s += time.perf_counter() - waited
                    if not failures:
                        self._record(call, decision, None, int(getattr(exc, "status", 500)),
                                     trace, 0, str(exc))
                        raise
                    failures.append(f"no other backend ({exc})")
                    break
                trace.wait_s += time.perf_counter() - waited
                if last_kind:
                    trace.failovers.append(last_kind)  # a failed attempt, and now another
                tried.append(lease.backend.id)
                result = await self._attempt(call, decision, lease, trace, len(tried), deadline)
                if isinstance(result, Reply):
                    return result
                failures.append(result.message)
                last_kind = result.kind
                last = result.reply or last
                if decision.backend is not None:
                    break  # the decision pinned one backend: there is nowhere else to go
        except asyncio.CancelledError:
            # the client left (or the gateway is stopping) before the first byte: still an event
            self._record(call, decision, tried[-1] if tried else None, 499, trace, len(tried),
                         "cancelled before the first byte (client gone or gateway stopping)")
            raise
        message = "; ".join(failures) or "request timed out"
        if last is not None:
            self._record(call, decision, tried[-1], last.status, trace, len(tried), message)
            return last
        self._record(call, decision, tried[-1] if tried else None, 503, trace, len(tried),
                     message)
        raise NoRouteAvailable(f"no backend could serve {call.request.model!r}: {message}")

    async def _attempt(self, call: Call, decision: RouteDecision, lease: Lease, trace: _Trace,
                       attempts: int, deadline: float) -> Reply | _Failure:
        """One try on one leased backend; releases the lease unless it hands back a stream."""
        t0 = time.perf_counter()
        route = _route_headers(decision, lease)
        try:
            upstream = plan(call, lease.api)
        except BaseException as exc:
            lease.release(Outcome(False, 400, str(exc)))
            raise
        if upstream.path is None:
            return await self._answer_locally(call, decision, lease, trace, attempts)
        response: UpstreamResponse | None = None
        handed_off = False
        try:
            auth = _authorization(lease)
            response = await self.pool.post(_root(lease.base_url), upstream.path,
                                            upstream.payload, deadline, auth)
            if falls_back(call, upstream, response.status):
                await response.read()
                response.release()
                upstream = plan(call, lease.api, native=False)
                response = await self.pool.post(_root(lease.base_url), upstream.path,
                                                upstream.payload, deadline, auth)
            if response.status >= 400:
                raw = await response.read()
                trace.upstream_s += time.perf_counter() - t0
                lacking = capabilities.unsupported(response.status, raw, call.request.needs)
                if lacking is not None:
                    return self._unsupported(call, decision, lease, response.status, raw,
                                             lacking, trace, attempts, t0)
                message = f"{lease.backend.id}: HTTP {response.status}: {error_message(raw)}"
                if response.status >= 500:
                    message = _explained(lease, message)
                lease.release(Outcome(False, response.status, message,
                                      seconds=time.perf_counter() - t0))
                reply = Reply(response.status, JSON_TYPE, route,
                              convert_error(call, upstream, raw, response.status))
                if response.status >= 500:
                    return _Failure(message, reply, "http_5xx")
                self._record(call, decision, lease.backend.id, response.status, trace,
                             attempts, message)
                return reply
            if call.request.stream:
                first = await response.next_chunk()
                if not first:
                    raise BackendError("closed the stream before sending anything")
                handed_off = True
                trace.ttft_s = time.perf_counter() - trace.started
                return self._stream_reply(call, decision, lease, upstream, response, first,
                                          trace, t0, attempts, route)
            raw = await response.read()
            body = convert_reply(call, upstream, raw, time.perf_counter() - t0)
            tokens = tokens_in(raw, lease.api)
            trace.prompt_tokens = prompt_tokens_in(raw, lease.api)
            trace.upstream_s += time.perf_counter() - t0
            lease.release(Outcome(True, 200, tokens=tokens, seconds=time.perf_counter() - t0))
            self._record(call, decision, lease.backend.id, 200, trace, attempts, None, tokens)
            content_type = response.content_type or JSON_TYPE
            return Reply(200, JSON_TYPE if upstream.translated else content_type, route, body)
        except (*_NETWORK_ERRORS, BackendError) as exc:
            connect = isinstance(exc, ConnectFailed)
            timeout = isinstance(exc, TimeoutError)
            status = 504 if timeout else 502
            message = _explained(lease, f"{lease.backend.id}: {_describe(exc)}")
            trace.upstream_s += time.perf_counter() - t0
            lease.release(Outcome(False, status, message, connect_failed=connect,
                                  seconds=time.perf_counter() - t0))
            kind = "connect" if connect else "timeout" if timeout else "network"
            return _Failure(message, kind=kind)
        except BaseException:
            lease.release(Outcome(False, 499, "cancelled", seconds=time.perf_counter() - t0))
            raise
        finally:
            if response is not None and not handed_off:
                response.release()  # keeps the connection only if the reply was read in full

    def _unsupported(self, call: Call, decision: RouteDecision, lease: Lease, status: int,
                     raw: bytes, lacking: str, trace: _Trace, attempts: int,
                     t0: float) -> Reply:
        """The backend cannot do what was asked: the client hears it at once, naming the
        backend and its kind; the route learns the capability is missing (not a failure)."""
        kind = lease.backend.labels.get("server") or lease.backend.kind
        message = (f"{lease.route} backend {lease.backend.id} ({kind}) does not support "
                   f"{capabilities.WORDS.get(lacking, lacking)} for {call.request.model!r}: "
                   f"{error_message(raw)}")
        lease.release(Outcome(False, status, message, seconds=time.perf_counter() - t0,
                              unsupported=lacking))
        self._record(call, decision, lease.backend.id, status, trace, attempts, message)
        body = error_body(call.api, status, message, "not_supported")
        return Reply(status, JSON_TYPE, _route_headers(decision, lease), body)

    def _stream_reply(self, call: Call, decision: RouteDecision, lease: Lease, upstream: Plan,
                      response: UpstreamResponse, first: bytes, trace: _Trace, t0: float,
                      attempts: int, route: dict[str, str]) -> StreamReply:
        stream = new_stream(call, upstream)

        def finish(outcome: Outcome) -> None:
            lease.release(outcome)
            trace.upstream_s += time.perf_counter() - t0
            trace.prompt_tokens = stream.prompt_tokens
            self._record(call, decision, lease.backend.id, outcome.status, trace, attempts,
                         outcome.error, outcome.tokens)

        # From the first chunk on, silence means a stalled backend (the wait for the first chunk,
        # which may include loading the model, is bounded by request_timeout alone).
        response.watch_idle(self.stream_idle_timeout)
        content_type = STREAM_TYPES[call.api]
        return StreamReply(200, content_type, route, finish=finish, response=response,
                           stream=stream, first=first, api=call.api,
                           backend=lease.backend.id, started=time.perf_counter(),
                           explain=lambda message: _explained(lease, message))

    async def _answer_locally(self, call: Call, decision: RouteDecision, lease: Lease,
                              trace: _Trace, attempts: int) -> Reply:
        """What an OpenAI-compatible backend has no endpoint for: `/api/show` (from the model's
        metadata) and Ollama's load request (the server has its model loaded already)."""
        try:
            if call.op == "show":
                data = show_from_info(await self.cluster.model_info(call.request.model))
            else:
                data = load_reply(call.op, call.request.model)
        finally:
            lease.release(Outcome(True, 200))
        self._record(call, decision, lease.backend.id, 200, trace, attempts, None)
        body = json.dumps(data).encode()
        return Reply(200, JSON_TYPE, _route_headers(decision, lease), body)

    def _record(self, call: Call, decision: RouteDecision | None, backend: str | None,
                status: int, trace: _Trace, attempts: int, error: str | None,
                tokens: int | None = None) -> None:
        self.cluster.record(RouteEvent(
            model=call.request.model, endpoint=call.request.endpoint, api=call.api,
            route=decision.route if decision else "", policy=decision.policy if decision else "",
            reason=decision.reason if decision else (error or ""), backend=backend,
            status=status, ok=status < 400, duration_s=time.perf_counter() - trace.started,
            attempts=attempts, tokens=tokens, error=error, prompt_tokens=trace.prompt_tokens,
            ttft_s=trace.ttft_s, upstream_s=trace.upstream_s, wait_s=trace.wait_s,
            failovers=tuple(trace.failovers),
        ))


def _explained(lease: Lease, message: str) -> str:
    """`message` plus the route's own account of the failure, when it has one."""
    try:
        detail = lease.failure_detail()
    except Exception:  # an explanation must never turn a failure into a crash
        return message
    return f"{message} ({detail})" if detail and detail not in message else message


def _route_headers(decision: RouteDecision, lease: Lease) -> dict[str, str]:
    return {"route": decision.route, "backend": lease.backend.id, "policy": decision.policy,
            "reason": decision.reason}


def _authorization(lease: Lease) -> bytes:
    """The backend's own `Authorization` value (a node key from the config), or b""."""
    credentials = lease.backend.credentials
    return credentials.reveal().encode("latin-1") if credentials else b""


def _root(base_url: str) -> str:
    """A lease's base URL as a server root (tolerating a trailing `/v1`)."""
    return base_url.rstrip("/").removesuffix("/v1")


def retarget(call: Call, model: str) -> Call:
    """`call` for another model (an alias's target or a fallback): body and bytes rewritten."""
    body = {**call.body, "model": model}
    return attrs.evolve(call, body=body, raw=json.dumps(body).encode(),
                        request=attrs.evolve(call.request, model=model))
