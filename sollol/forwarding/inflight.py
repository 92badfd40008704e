"""One request in flight: its route decision, the lease it holds, where its time went, and its
end, reported once.

A request may hold several leases in turn: an attempt that fails before the first byte hands its
lease back (`failed_attempt`) and the next backend is leased. It ends exactly once: `finish`
hands back the lease still held, if any, and records the request as one `RouteEvent`, both from
the same `Outcome`. A later `finish` does nothing, so no exit path can report a request twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import attrs

from sollol.forwarding.calls import Call, endpoint_name
from sollol.models import RouteDecision, RouteEvent
from sollol.routes import Lease, Outcome

__all__ = ["InFlight"]


@attrs.define(eq=False)
class InFlight:
    """One routed request from its decision to its end (metrics and the dashboard read its
    `RouteEvent`; the route reads each lease's `Outcome`)."""

    call: Call
    record: Callable[[RouteEvent], None]
    """Where the finished request goes (the cluster's `record`)."""
    decision: RouteDecision | None = None
    """The route decided for the request, carried to every attempt (None until decided)."""
    lease: Lease | None = None
    """The lease in hand: taken by `leased`, given back by `failed_attempt` or `finish`."""
    tried: list[str] = attrs.field(factory=list)
    """Ids of the backends leased so far, in order."""
    started: float = attrs.field(factory=time.perf_counter)
    wait_s: float = 0.0
    upstream_s: float = 0.0
    ttft_s: float | None = None
    prompt_tokens: int | None = None
    failovers: list[str] = attrs.field(factory=list)
    finished: bool = False
    _attempt_at: float = 0.0
    _upstream: bool = False  # the attempt in hand has started talking to its backend
    _last_failure: str = ""  # why the last attempt failed; a failover once another follows

    @property
    def backend(self) -> str | None:
        """The backend leased last (the one an event names), or None."""
        return self.tried[-1] if self.tried else None

    @property
    def attempts(self) -> int:
        return len(self.tried)

    def waited(self, seconds: float) -> None:
        """Seconds spent waiting for a lease (in a route's queue), whatever came of it."""
        self.wait_s += seconds

    def leased(self, lease: Lease) -> None:
        """A backend was leased: a new attempt begins."""
        assert self.lease is None, "a request holds one lease at a time"
        if self._last_failure:
            self.failovers.append(self._last_failure)  # a failed attempt, and now another
            self._last_failure = ""
        self.lease = lease
        self.tried.append(lease.backend.id)
        self._attempt_at = time.perf_counter()
        self._upstream = False

    def sending(self) -> None:
        """The attempt starts its exchange with the backend (its time is upstream time)."""
        self._upstream = True

    def first_chunk(self) -> None:
        """The first streamed chunk arrived: the request's time to first token."""
        self.ttft_s = time.perf_counter() - self.started

    def elapsed(self) -> float:
        """Seconds since the lease in hand was taken (an attempt's own time, for its Outcome)."""
        return time.perf_counter() - self._attempt_at

    def held(self) -> float | None:
        """`elapsed()` while a lease is in hand, else None (an Outcome's `seconds`)."""
        return self.elapsed() if self.lease is not None else None

    def explained(self, message: str) -> str:
        """`message` plus the route's own account of the failure, when it has one."""
        if self.lease is None:
            return message
        try:
            detail = self.lease.failure_detail()
        except Exception:  # an explanation must never turn a failure into a crash
            return message
        return f"{message} ({detail})" if detail and detail not in message else message

    def failed_attempt(self, outcome: Outcome, kind: str) -> None:
        """The attempt failed before the first byte (`kind`: "connect", "timeout", "http_5xx"
        or "network"): its lease goes back with `outcome`; the request goes on."""
        self._give_back(outcome)
        self._last_failure = kind

    def finish(self, outcome: Outcome) -> None:
        """The request is over: the lease in hand (if any) goes back with `outcome` and the
        request is recorded with it. Only the first call counts; later ones do nothing."""
        if self.finished:
            return
        self.finished = True
        self._give_back(outcome)
        decision = self.decision
        request = self.call.request
        self.record(RouteEvent(
            model=request.model, endpoint=endpoint_name(self.call.api, self.call.op),
            api=self.call.api,
            route=decision.route if decision else "", policy=decision.policy if decision else "",
            reason=decision.reason if decision else (outcome.error or ""), backend=self.backend,
            status=outcome.status, ok=outcome.status < 400,
            duration_s=time.perf_counter() - self.started, attempts=self.attempts,
            tokens=outcome.tokens, error=outcome.error, prompt_tokens=self.prompt_tokens,
            ttft_s=self.ttft_s, upstream_s=self.upstream_s, wait_s=self.wait_s,
            failovers=tuple(self.failovers),
        ))

    def fault(self, message: str) -> None:
        """The gateway itself failed (a bug, an unreadable model file): the request is recorded
        as a 500, and the lease in hand goes back as a failure that is not the backend's (the
        route must not count it against a node)."""
        if self.finished:
            return
        self._give_back(Outcome(False, 499, message, seconds=self.held()))
        self.finish(Outcome(False, 500, message))

    def _give_back(self, outcome: Outcome) -> None:
        lease, self.lease = self.lease, None
        if lease is None:
            return
        if self._upstream:
            self.upstream_s += time.perf_counter() - self._attempt_at
            self._upstream = False
        lease.release(outcome)
