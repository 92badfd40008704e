"""Forward one request: decide its route, lease an upstream, send it in the backend's dialect.

Retries happen only before the first byte reaches the client: a connect error, a timeout or a
5xx on one backend sends the request to another (at most `max_retries` more). After the first
byte a failure ends the stream with an error object in the client's dialect; so does a stream
that stalls for `stream_idle_timeout` seconds between chunks. Each request is carried by one
`InFlight` (forwarding/inflight.py): every lease goes back once with an `Outcome`, and the
request is recorded once as a `RouteEvent`, when it finishes.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING

import attrs

from sollol.core import capabilities
from sollol.core.aliases import Alias
from sollol.core.redact import Redactor, secret_texts
from sollol.core.scope import scoped_targets, visible_names, visible_show
from sollol.core.units import keep_alive_seconds
from sollol.dialects.error_shapes import error_body
from sollol.dialects.replies import (
    error_message,
    load_reply,
    show_from_info,
    show_with_capabilities,
)
from sollol.dialects.translate import (
    JSON_TYPE,
    STREAM_TYPES,
    Plan,
    convert_error,
    convert_reply,
    falls_back,
    is_load_request,
    new_stream,
    plan,
    prompt_tokens_in,
    tokens_in,
)
from sollol.errors import BackendError, ModelNotFound, NoRouteAvailable, Overloaded, SollolError
from sollol.forwarding import context_limit, token_count
from sollol.forwarding.calls import Call, Op
from sollol.forwarding.inflight import InFlight
from sollol.forwarding.reply import NETWORK_ERRORS as _NETWORK_ERRORS
from sollol.forwarding.reply import Reply, StreamReply
from sollol.forwarding.reply import describe_error as _describe
from sollol.forwarding.upstream import ConnectFailed, UpstreamPool, UpstreamResponse
from sollol.models import RouteDecision
from sollol.routes import KeepAlive, Lease, Outcome

if TYPE_CHECKING:
    from sollol.core.runtime import ClusterRuntime

__all__ = ["Call", "Dispatcher", "Op", "Reply", "StreamReply"]
FALLBACK_STATUSES = frozenset({429, 500, 502, 503, 504})
"""Replies after which the next fallback model is tried (unavailable or overloaded)."""
CANCELLED = "cancelled before the first byte (client gone or gateway stopping)"


@attrs.define
class _Failure:
    """An attempt that failed before the first byte; `reply` is the upstream's error, if any."""

    message: str
    reply: Reply | None = None


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
        only, each one its key may use); raise SollolError when no backend could take it."""
        chain = scoped_targets(self.cluster.config, call.request.model, call.key)
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
            if call.key is not None and call.op == "show" and reply.status == 200:
                reply.body = visible_show(reply.body, visible_names(self.cluster.config,
                                                                    call.key))
            return reply
        raise AssertionError("targets() always names the requested model")  # pragma: no cover

    async def _open(self, call: Call, alias: Alias | None) -> Reply:
        """Route and send `call` for one model (an alias may fix its route or nodes). One
        `InFlight` carries it; whatever ends it (a reply, an error, a cancellation) finishes
        it, once."""
        request = InFlight(call, self.cluster.record)
        try:
            return await self._serve(request, alias)
        except SollolError as exc:
            if not request.finished:  # (`_serve` finishes it before raising "no backend")
                request.finish(Outcome(False, exc.status, str(exc), seconds=request.held()))
            raise
        except Exception as exc:  # a fault of the gateway's own, never the backend's
            request.fault(f"gateway error: {_describe(exc)}")
            raise
        except BaseException:
            # the client left (or the gateway is stopping) before the first byte: still an event
            if not request.finished:
                request.finish(Outcome(False, 499, CANCELLED, seconds=request.held()))
            raise

    async def _serve(self, request: InFlight, alias: Alias | None) -> Reply:
        """Decide the route once, then lease its backends in turn until one answers (at most
        `max_retries` more after the first, within `request_timeout`)."""
        wanted = request.call.request
        visible = visible_names(self.cluster.config, request.call.key)  # for "did you mean"
        if alias is not None and (alias.route or alias.nodes):
            request.decision = await self.cluster.decide_for_alias(wanted, alias)
        else:
            request.decision = await self.cluster._decide(wanted, visible)
        decision = request.decision
        keeper = self.cluster.routes.get(decision.route)
        keep_alive = _keep_alive(request.call)
        if keep_alive == 0 and is_load_request(request.call):
            # unload it wherever a route keeps it loaded, whichever route serves it next
            for route in self.cluster.routes.values():
                if isinstance(route, KeepAlive):
                    await route.unload(wanted.key)
            if isinstance(keeper, KeepAlive):
                return self._unloaded(request)
        outside = self.cluster.outside(alias) if alias is not None and alias.nodes else []
        failures: list[str] = []
        last: Reply | None = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(self.cluster.config["request_timeout"])
        while request.attempts <= self.max_retries and loop.time() < deadline:
            asked = time.perf_counter()
            try:
                lease = await self.cluster._acquire(wanted, decision, visible=visible,
                                                    exclude=[*request.tried, *outside])
            except SollolError as exc:
                if not failures:
                    raise
                failures.append(f"no other backend ({exc})")
                break
            finally:
                request.waited(time.perf_counter() - asked)
            request.leased(lease)
            if isinstance(keeper, KeepAlive):  # each request sets it, as in Ollama
                keeper.keep_alive(wanted.key, keep_alive)
            result = await self._attempt(request, deadline)
            if isinstance(result, Reply):
                return result
            failures.append(result.message)
            last = result.reply or last
            if decision.backend is not None:
                break  # the decision pinned one backend: there is nowhere else to go
        message = "; ".join(failures) or "request timed out"
        if last is not None:
            request.finish(Outcome(False, last.status, message))
            return last
        request.finish(Outcome(False, 503, message))
        raise NoRouteAvailable(f"no backend could serve {wanted.model!r}: {message}")

    async def _attempt(self, request: InFlight, deadline: float) -> Reply | _Failure:
        """One try on the leased backend: a reply finishes the request (a stream, when it
        ends); a failure before the first byte gives the lease back for another try."""
        call, lease, decision = request.call, request.lease, request.decision
        assert lease is not None and decision is not None
        route = _route_headers(decision, lease)
        upstream = plan(call, lease.api)
        if upstream.path is None:
            return await self._answer_locally(request, route, deadline)
        response: UpstreamResponse | None = None
        handed_off = False
        try:
            request.sending()
            auth = _authorization(lease)
            response = await self.pool.post(_root(lease.base_url), upstream.path,
                                            upstream.payload, deadline, auth)
            if falls_back(call, upstream, response.status):
                await response.read()
                response.release()
                upstream = plan(call, lease.api, native=False)
                if upstream.path is None:
                    return await self._answer_locally(request, route, deadline)
                response = await self.pool.post(_root(lease.base_url), upstream.path,
                                                upstream.payload, deadline, auth)
            if response.status >= 400:
                return await self._refused(request, upstream, response, route)
            if call.request.stream:
                first = await response.next_chunk()
                if not first:
                    raise BackendError("closed the stream before sending anything")
                handed_off = True
                request.first_chunk()
                # From the first chunk on, silence means a stalled backend (the wait for the
                # first chunk, which may include loading the model, is bounded by
                # request_timeout alone).
                response.watch_idle(self.stream_idle_timeout)
                return StreamReply(200, STREAM_TYPES[call.api], route, request=request,
                                   response=response, stream=new_stream(call, upstream),
                                   first=first)
            raw = await response.read()
            body = convert_reply(call, upstream, raw, request.elapsed())
            if call.op == "show":
                body = show_with_capabilities(body, self._capabilities(call))
            elif call.op == "count_tokens":
                body = token_count.by_node(body)
            body = _redacted(lease, body)
            request.prompt_tokens = prompt_tokens_in(raw, lease.api)
            request.finish(Outcome(True, 200, tokens=tokens_in(raw, lease.api),
                                   seconds=request.elapsed()))
            content_type = response.content_type or JSON_TYPE
            return Reply(200, JSON_TYPE if upstream.translated else content_type, route, body)
        except (*_NETWORK_ERRORS, BackendError) as exc:
            connect = isinstance(exc, ConnectFailed)
            timeout = isinstance(exc, TimeoutError)
            message = request.explained(f"{lease.backend.id}: {_describe(exc)}")
            request.failed_attempt(Outcome(False, 504 if timeout else 502, message,
                                           connect_failed=connect, seconds=request.elapsed()),
                                   "connect" if connect else "timeout" if timeout else "network")
            return _Failure(message)
        finally:
            if response is not None and not handed_off:
                response.release()  # keeps the connection only if the reply was read in full

    async def _refused(self, request: InFlight, upstream: Plan, response: UpstreamResponse,
                       route: dict[str, str]) -> Reply | _Failure:
        """The backend answered with an error status: a 5xx may be retried elsewhere; a 4xx
        (or a capability the backend lacks) is the client's answer."""
        call, lease, status = request.call, request.lease, response.status
        assert lease is not None
        raw = await response.read()
        lacking = capabilities.unsupported(status, raw, call.request.needs)
        if lacking is not None:
            return self._unsupported(request, status, raw, lacking, route)
        message = f"{lease.backend.id}: HTTP {status}: {error_message(raw)}"
        figures = context_limit.too_long(status, raw)
        if figures is not None:  # the user can fix this one: say how
            message = f"{message}; {context_limit.HOW_TO_RAISE}"
            request.finish(Outcome(False, status, message, seconds=request.elapsed()))
            body = error_body(call.api, status, message, context_limit.CODE, figures or None)
            return Reply(status, JSON_TYPE, route, body)
        if status >= 500:
            message = request.explained(message)
            request.failed_attempt(Outcome(False, status, message, seconds=request.elapsed()),
                                   "http_5xx")
        else:
            request.finish(Outcome(False, status, message, seconds=request.elapsed()))
        reply = Reply(status, JSON_TYPE, route, convert_error(call, upstream, raw, status))
        return _Failure(message, reply) if status >= 500 else reply

    def _unsupported(self, request: InFlight, status: int, raw: bytes, lacking: str,
                     route: dict[str, str]) -> Reply:
        """The backend cannot do what was asked: the client hears it at once, naming the
        backend and its kind; the route learns the capability is missing (not a failure)."""
        call, lease = request.call, request.lease
        assert lease is not None
        kind = lease.backend.labels.get("server") or lease.backend.kind
        message = (f"{lease.route} backend {lease.backend.id} ({kind}) does not support "
                   f"{capabilities.WORDS.get(lacking, lacking)} for {call.request.model!r}: "
                   f"{error_message(raw)}")
        request.finish(Outcome(False, status, message, seconds=request.elapsed(),
                               unsupported=lacking))
        body = error_body(call.api, status, message, "not_supported")
        return Reply(status, JSON_TYPE, route, body)

    def _unloaded(self, request: InFlight) -> Reply:
        """Ollama's answer to its unload request (`keep_alive: 0`, no prompt) for a route that
        keeps models loaded itself: nothing is started to give it."""
        call, decision = request.call, request.decision
        assert decision is not None
        request.finish(Outcome(True, 200))
        route = {"route": decision.route, "policy": decision.policy, "reason": decision.reason}
        body = json.dumps(load_reply(call.op, call.request.model, unload=True)).encode()
        return Reply(200, JSON_TYPE, route, body)

    async def _answer_locally(self, request: InFlight, route: dict[str, str],
                              deadline: float) -> Reply:
        """What a backend has no endpoint for: `/api/show` on an OpenAI-compatible one (from the
        model's metadata), Ollama's load request (the server has its model loaded already), a
        token count (the node's template and tokenizer where it has them, else estimated)."""
        call, lease = request.call, request.lease
        assert lease is not None
        if call.op == "count_tokens":
            data = await token_count.count_here(self.pool, _root(lease.base_url),
                                                _authorization(lease), call, lease.api,
                                                deadline)
        elif call.op == "show":
            data = show_from_info(await self.cluster.model_info(call.request.model),
                                  self._capabilities(call))
        else:
            data = load_reply(call.op, call.request.model)
        request.finish(Outcome(True, 200))
        return Reply(200, JSON_TYPE, route, json.dumps(data).encode())


    def _capabilities(self, call: Call) -> list[str] | None:
        """What the cluster's nodes that hold the model can do with it, in Ollama's words."""
        return capabilities.cluster_words(self.cluster.route_states().values(),
                                          call.request.model)


def _keep_alive(call: Call) -> float | None:
    """The Ollama request's `keep_alive` in seconds (checked valid by validate), or None."""
    return keep_alive_seconds(call.body.get("keep_alive")) if call.api == "ollama" else None


def _route_headers(decision: RouteDecision, lease: Lease) -> dict[str, str]:
    return {"route": decision.route, "backend": lease.backend.id, "policy": decision.policy,
            "reason": decision.reason}


def _authorization(lease: Lease) -> bytes:
    """The backend's own `Authorization` value (a node key from the config), or b""."""
    credentials = lease.backend.credentials
    return credentials.reveal().encode("latin-1") if credentials else b""


def _redacted(lease: Lease, body: bytes) -> bytes:
    """`body` without the backend's own key (a node may quote it even in a 200 reply)."""
    if not lease.backend.credentials:
        return body
    return Redactor.of(secret_texts(lease.backend.credentials)).data(body)


def _root(base_url: str) -> str:
    """A lease's base URL as a server root (tolerating a trailing `/v1`)."""
    return base_url.rstrip("/").removesuffix("/v1")


def retarget(call: Call, model: str) -> Call:
    """`call` for another model (an alias's target or a fallback): body and bytes rewritten."""
    body = {**call.body, "model": model}
    return attrs.evolve(call, body=body, raw=json.dumps(body).encode(),
                        request=attrs.evolve(call.request, model=model))
