"""Single-use join nonces: a bounded store with a time to live and a cap per address."""

from __future__ import annotations

import base64
import secrets
import time
from collections import OrderedDict

import attrs

from .errors import JoinRefused

NONCE_TTL = 30.0
MAX_NONCES = 4096
PER_PEER = 8
"""Open challenges one address may hold: a single flooding host cannot push out the nonces
other machines are about to use."""


@attrs.define
class NonceStore:
    """Hands out nonces and takes each back once, within `ttl`; the oldest drop past `limit`."""

    ttl: float = NONCE_TTL
    limit: int = MAX_NONCES
    per_peer: int = PER_PEER
    _issued: OrderedDict[str, tuple[float, str]] = attrs.field(factory=OrderedDict)
    _open: dict[str, int] = attrs.field(factory=dict)

    def issue(self, peer: str = "", now: float | None = None) -> str:
        """A fresh nonce (base64 of 16 random bytes) for `peer`; JoinRefused(429) when that
        address already holds `per_peer` open ones."""
        now = time.monotonic() if now is None else now
        self._expire(now)
        if self._open.get(peer, 0) >= self.per_peer:
            msg = (f"{peer or 'this address'} holds {self.per_peer} unused challenges; use one "
                   f"or wait {self.ttl:.0f} s")
            raise JoinRefused(msg, 429)
        nonce = base64.b64encode(secrets.token_bytes(16)).decode()
        self._issued[nonce] = (now + self.ttl, peer)
        self._open[peer] = self._open.get(peer, 0) + 1
        while len(self._issued) > self.limit:
            self._closed(self._issued.popitem(last=False)[1][1])
        return nonce

    def take(self, nonce: object, now: float | None = None) -> None:
        """Use a nonce up; JoinRefused (401) when unknown, used already or expired."""
        now = time.monotonic() if now is None else now
        entry = self._issued.pop(nonce, None) if isinstance(nonce, str) else None
        if entry is None:
            raise JoinRefused("unknown or already used nonce (ask /sollol/cluster/challenge)")
        self._closed(entry[1])
        if now > entry[0]:
            raise JoinRefused("the nonce expired (ask /sollol/cluster/challenge again)")

    def _expire(self, now: float) -> None:
        # issued in order with one ttl: the oldest are at the front
        while self._issued:
            nonce, (deadline, peer) = next(iter(self._issued.items()))
            if deadline >= now:
                return
            del self._issued[nonce]
            self._closed(peer)

    def _closed(self, peer: str) -> None:
        left = self._open.get(peer, 0) - 1
        if left > 0:
            self._open[peer] = left
        else:
            self._open.pop(peer, None)

    def __len__(self) -> int:
        return len(self._issued)
