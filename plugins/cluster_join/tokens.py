"""Join tokens: `sollol-join-<id>.<secret>.<pin>`, stored hashed, revocable, optionally expiring.

The token text is shown once, at creation. The store keeps per token its id, the SHA-256 of the
secret (which is also the HMAC key both sides use: `join_key`), a note, the creation and expiry
times, a revoked flag and a use count; never the secret. Whoever reads the store file can make
join proofs, so it is written with mode 0600, like the CA key.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

import attrs

from sollol.errors import PluginError

from .errors import BadToken

PREFIX = "sollol-join-"
_TOKEN = re.compile(r"^sollol-join-([0-9a-f]{8})\.([A-Za-z0-9_-]{43})\.([0-9a-f]{32})$")


def join_key(secret: str) -> bytes:
    """The HMAC key of a token: SHA-256 of its secret's text (32 raw bytes)."""
    return hashlib.sha256(secret.encode("ascii")).digest()


@attrs.frozen
class JoinToken:
    """A parsed join token, as the worker holds it."""

    token_id: str
    secret: str = attrs.field(repr=False)
    pin: str

    @property
    def key(self) -> bytes:
        """The HMAC key for the join proof (`join_key(secret)`)."""
        return join_key(self.secret)

    def text(self) -> str:
        """The token as the user types it."""
        return f"{PREFIX}{self.token_id}.{self.secret}.{self.pin}"

    @classmethod
    def parse(cls, text: str) -> JoinToken:
        """Parse a token the user gave; BadToken (naming the expected shape) when malformed."""
        match = _TOKEN.match(text.strip())
        if match is None:
            msg = "malformed join token: expected sollol-join-<8 hex>.<43 chars>.<32 hex>"
            raise BadToken(msg)
        return cls(*match.groups())


@attrs.frozen
class TokenRecord:
    """What the gateway stores about a token (never its secret)."""

    token_id: str
    secret_hash: str
    note: str = ""
    created: float = 0.0
    expires: float | None = None
    revoked: bool = False
    uses: int = 0

    def public(self) -> dict[str, Any]:
        """The record for listings: everything but the hash."""
        data = attrs.asdict(self)
        del data["secret_hash"]
        return data

    def state(self, now: float) -> str:
        """"active", "revoked" or "expired"."""
        if self.revoked:
            return "revoked"
        if self.expires is not None and now >= self.expires:
            return "expired"
        return "active"


@attrs.define
class TokenStore:
    """The gateway's token file (`tokens.json` in the cluster state dir, mode 0600)."""

    path: Path
    _records: dict[str, TokenRecord] = attrs.field(factory=dict)

    @classmethod
    def load(cls, path: Path) -> TokenStore:
        """Read the store; a missing file is an empty store."""
        store = cls(path)
        if path.exists():
            try:
                for item in json.loads(path.read_text()):
                    record = TokenRecord(**item)
                    store._records[record.token_id] = record
            except (ValueError, TypeError, AttributeError) as exc:
                raise unreadable(path, exc) from None
        return store

    def _save(self) -> None:
        data = [attrs.asdict(r) for r in self._records.values()]
        write_private(self.path, json.dumps(data, indent=1).encode())

    def create(self, pin: str, note: str = "", expires_in: float | None = None) -> str:
        """Make a token and store its hash; returns the token text (the only time it is shown)."""
        token_id = secrets.token_hex(4)
        while token_id in self._records:
            token_id = secrets.token_hex(4)
        secret = secrets.token_urlsafe(32)
        now = time.time()
        expires = None if expires_in is None else now + expires_in
        self._records[token_id] = TokenRecord(
            token_id, join_key(secret).hex(), note, now, expires,
        )
        self._save()
        return JoinToken(token_id, secret, pin).text()

    def records(self) -> list[TokenRecord]:
        """Every token, oldest first."""
        return sorted(self._records.values(), key=lambda r: r.created)

    def revoke(self, token_id: str) -> TokenRecord:
        """Revoke a token (kept in the store, marked revoked); KeyError when unknown."""
        record = attrs.evolve(self._records[token_id], revoked=True)
        self._records[token_id] = record
        self._save()
        return record

    def key_for(self, token_id: str, now: float | None = None) -> bytes:
        """The HMAC key of a usable token; BadToken saying why it cannot be used."""
        record = self._records.get(token_id)
        if record is None:
            raise BadToken(f"unknown join token {token_id!r}")
        state = record.state(time.time() if now is None else now)
        if state != "active":
            raise BadToken(f"join token {token_id!r} is {state}")
        return bytes.fromhex(record.secret_hash)

    def key_of(self, token_id: str) -> bytes | None:
        """The HMAC key of a token in any state (to answer a machine approved later)."""
        record = self._records.get(token_id)
        return None if record is None else bytes.fromhex(record.secret_hash)

    def count_use(self, token_id: str) -> None:
        """Count one successful join with a token."""
        record = self._records[token_id]
        self._records[token_id] = attrs.evolve(record, uses=record.uses + 1)
        self._save()


def unreadable(path: Path, exc: Exception) -> PluginError:
    """The error for a cluster state file that is not what the gateway wrote."""
    return PluginError(f"the cluster state file {path} is unreadable ({exc}); restore it from a "
                       "backup, or move it away (tokens.json: make new tokens; members.json: "
                       "machines join again)")


def write_private(path: Path, data: bytes) -> None:
    """Write a file readable only by its owner (0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> float:
    """Seconds from a number or text such as `90`, `30m`, `24h`, `7d`; ValueError otherwise."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    match = _DURATION.match(value.strip().lower()) if isinstance(value, str) else None
    if match is None or float(match.group(1)) <= 0:
        msg = f"expected a duration such as 30m, 24h or 7d, got {value!r}"
        raise ValueError(msg)
    return float(match.group(1)) * _UNITS[match.group(2)]
