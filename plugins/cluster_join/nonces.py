"""Single-use join nonces: a bounded store with a time to live."""

from __future__ import annotations

import base64
import secrets
import time
from collections import OrderedDict

import attrs

from .errors import JoinRefused

NONCE_TTL = 30.0
MAX_NONCES = 4096


@attrs.define
class NonceStore:
    """Hands out nonces and takes each back once, within `ttl`; the oldest drop past `limit`."""

    ttl: float = NONCE_TTL
    limit: int = MAX_NONCES
    _issued: OrderedDict[str, float] = attrs.field(factory=OrderedDict)

    def issue(self, now: float | None = None) -> str:
        """A fresh nonce (base64 of 16 random bytes)."""
        now = time.monotonic() if now is None else now
        nonce = base64.b64encode(secrets.token_bytes(16)).decode()
        self._issued[nonce] = now + self.ttl
        while len(self._issued) > self.limit:
            self._issued.popitem(last=False)
        return nonce

    def take(self, nonce: object, now: float | None = None) -> None:
        """Use a nonce up; JoinRefused (401) when unknown, used already or expired."""
        now = time.monotonic() if now is None else now
        deadline = self._issued.pop(nonce, None) if isinstance(nonce, str) else None
        if deadline is None:
            raise JoinRefused("unknown or already used nonce (ask /sollol/cluster/challenge)")
        if now > deadline:
            raise JoinRefused("the nonce expired (ask /sollol/cluster/challenge again)")

    def __len__(self) -> int:
        return len(self._issued)
