"""The cluster endpoints on the gateway's port, as `GatewayEndpoint`s.

Public (the token or the member's signature authenticates the caller; failures are counted
per address, logged with the peer's address and the reason, never a secret):
    GET  /sollol/cluster/challenge      POST /sollol/cluster/join
    POST /sollol/cluster/heartbeat      POST /sollol/cluster/status      POST /sollol/cluster/leave
Admin (an admin key, like every /sollol/ path):
    GET|POST /sollol/cluster/tokens     DELETE /sollol/cluster/tokens/<id>
    GET /sollol/cluster/members         GET /sollol/cluster/pending
    POST /sollol/cluster/approve/<name> DELETE /sollol/cluster/members/<name>
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from sollol.models import GatewayEndpoint, HttpReply, HttpRequest

from .errors import JoinRefused
from .handshake import SIGNATURE_HEADER
from .limits import LogBudget
from .service import JoinService
from .tokens import parse_duration

log = logging.getLogger("sollol.cluster")
BASE = "/sollol/cluster/"
MAX_BODY = 64 * 1024
"""Bytes a public cluster request may carry: a join with 64 devices is about 8 KiB."""
Handler = Callable[[HttpRequest], Awaitable[HttpReply]]


def _json(request: HttpRequest) -> Any:
    if not request.body.strip():
        return {}
    try:
        return json.loads(request.body)
    except ValueError:
        raise JoinRefused("the body is not valid JSON", 400) from None


def _tail(request: HttpRequest, prefix: str) -> str:
    name = unquote(request.path[len(prefix):]).strip("/")
    if not name:
        raise JoinRefused(f"name one after {prefix}", 400)
    return name


def endpoints(service: JoinService) -> list[GatewayEndpoint]:
    """Every cluster endpoint, bound to `service`."""

    budget = LogBudget()

    def guarded(what: str, handler: Handler) -> Handler:
        """Per-address failure limit, and a WARNING naming peer and reason for each refusal
        (at most `budget` lines: a flood says how many it held back)."""

        async def run(request: HttpRequest) -> HttpReply:
            peer = request.client
            try:
                service.check_peer(peer)
                return await handler(request)
            except JoinRefused as exc:
                if exc.status != 429:
                    service.limiter.fail(peer)
                    logged, held = budget.take()
                    if held:
                        log.warning("cluster: %d more refused requests were not logged", held)
                    if logged:
                        log.warning("cluster: %s from %s refused (%d): %s", what, peer,
                                    exc.status, exc)
                raise

        return run

    async def challenge(request: HttpRequest) -> HttpReply:
        return HttpReply(200, service.challenge(request.client))

    async def join(request: HttpRequest) -> HttpReply:
        status, answer = await service.join(_json(request), request.client)
        return HttpReply(status, answer)

    def signed(call: Callable[..., Awaitable[tuple[int, dict[str, Any]]]],
               with_peer: bool) -> Handler:
        async def run(request: HttpRequest) -> HttpReply:
            signature = request.headers.get(SIGNATURE_HEADER.lower())
            args = (request.body, signature, *((request.client,) if with_peer else ()))
            status, answer = await call(*args)
            return HttpReply(status, answer)

        return run

    async def leave(body: bytes, signature: str | None) -> tuple[int, dict[str, Any]]:
        return 200, await service.leave(body, signature)

    async def tokens(request: HttpRequest) -> HttpReply:
        now = time.time()
        if request.method == "GET":
            return HttpReply(200, {"tokens": [{**r.public(), "state": r.state(now)}
                                              for r in service.tokens.records()]})
        body = _json(request)
        note = body.get("note", "") if isinstance(body, dict) else ""
        expires = body.get("expires") if isinstance(body, dict) else None
        if not isinstance(note, str) or len(note) > 200:
            raise JoinRefused("note must be text of at most 200 characters", 400)
        try:
            seconds = None if expires in (None, "") else parse_duration(expires)
        except ValueError as exc:
            raise JoinRefused(f"expires: {exc}", 400) from None
        token = service.create_token(note, seconds)
        record = service.tokens.records()[-1]
        return HttpReply(201, {"token": token, **record.public(), "state": record.state(now)})

    async def revoke(request: HttpRequest) -> HttpReply:
        token_id = _tail(request, BASE + "tokens/")
        try:
            record = service.tokens.revoke(token_id)
        except KeyError:
            raise JoinRefused(f"no join token {token_id!r}", 404) from None
        log.info("join token %s revoked", token_id)
        return HttpReply(200, {**record.public(), "state": "revoked"})

    async def members(request: HttpRequest) -> HttpReply:
        report = service.report()
        report["members"] = [m for m in report["members"] if m["state"] != "pending"]
        return HttpReply(200, report)

    async def pending(request: HttpRequest) -> HttpReply:
        report = service.report()
        return HttpReply(200, {"pending": [m for m in report["members"]
                                           if m["state"] == "pending"],
                               "join_policy": report["join_policy"]})

    async def approve(request: HttpRequest) -> HttpReply:
        return HttpReply(200, await service.approve(_tail(request, BASE + "approve/")))

    async def remove(request: HttpRequest) -> HttpReply:
        return HttpReply(200, await service.remove(_tail(request, BASE + "members/")))

    def public(path: str, methods: tuple[str, ...], handler: Handler) -> GatewayEndpoint:
        return GatewayEndpoint(BASE + path, methods, guarded(path, handler), public=True,
                               max_body=MAX_BODY)

    return [
        public("challenge", ("GET",), challenge),
        public("join", ("POST",), join),
        public("heartbeat", ("POST",), signed(service.heartbeat, with_peer=True)),
        public("status", ("POST",), signed(service.status, with_peer=False)),
        public("leave", ("POST",), signed(leave, with_peer=False)),
        GatewayEndpoint(BASE + "tokens", ("GET", "POST"), tokens),
        GatewayEndpoint(BASE + "tokens/", ("DELETE",), revoke, prefix=True),
        GatewayEndpoint(BASE + "members", ("GET",), members),
        GatewayEndpoint(BASE + "members/", ("DELETE",), remove, prefix=True),
        GatewayEndpoint(BASE + "pending", ("GET",), pending),
        GatewayEndpoint(BASE + "approve/", ("POST",), approve, prefix=True),
    ]
