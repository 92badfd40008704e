"""Access keys: the `api_keys` config, hashing, and finding the key a request presents.

Keys made by `sollol keys create` are 256-bit random tokens, so one unsalted SHA-256 protects
them as well as a slow password hash would, and lets the gateway find a key with one hash and
one dict lookup per request. The stored digest is then compared with `hmac.compare_digest`.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from sollol.core.names import canonical

KEY_PREFIX = "sollol-"
HASH_PREFIX = "sha256:"
MIN_PLAIN_LENGTH = 16
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_FIELDS = {"name", "key", "hash", "admin", "models"}
_WALKS = re.compile(r"(?:^|[/\\])\.{1,2}(?:[/\\]|$)")


def new_key() -> str:
    """A fresh random key (43 URL-safe characters after the prefix)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """What the config stores for `key`: `sha256:` and the hex digest."""
    return HASH_PREFIX + hashlib.sha256(key.encode()).hexdigest()


@attrs.frozen
class AccessKey:
    """One key's identity and scope (never the key itself)."""

    name: str
    digest: bytes = attrs.field(repr=False)
    admin: bool = False
    models: tuple[str, ...] = ("*",)
    _pattern: re.Pattern[str] | None = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        pattern = None
        if "*" not in self.models:  # one compiled regex for all globs: one match per check
            pattern = re.compile("|".join(fnmatch.translate(g.lower()) for g in self.models))
        object.__setattr__(self, "_pattern", pattern)

    @property
    def scope(self) -> str:
        return "admin" if self.admin else "inference"

    @property
    def limited(self) -> bool:
        """Whether the key's globs leave some models out (anything but `*`)."""
        return self._pattern is not None

    def allows_model(self, model: str) -> bool:
        """Whether any of the key's model globs matches one spelling of `model`. A name that
        walks a path (a `.` or `..` segment) is never allowed to a limited key: a resolver
        would turn it into another name than the one the glob saw."""
        if self._pattern is None:
            return True
        if _WALKS.search(model.strip()):
            return False
        return any(self._pattern.match(name) for name in model_spellings(model))

    def describe(self) -> dict[str, Any]:
        """Plain data for listings: name and scope, never the key or its hash."""
        return {"name": self.name, "admin": self.admin, "models": list(self.models)}


def model_spellings(model: str) -> tuple[str, ...]:
    """`model` as written and in its canonical form (`sollol.core.names`), with and without the
    default tag, lower-cased: a glob decides on the model, not on how a client spelled it."""
    written = model.strip().lower()
    full = canonical(model.strip()).lower()
    return (written, full, full.removesuffix(":latest"))


def _plain_digest(key: str, where: str) -> bytes:
    if len(key) < MIN_PLAIN_LENGTH or key != key.strip() or any(c.isspace() for c in key):
        msg = (f"{where}: a key of at least {MIN_PLAIN_LENGTH} characters without spaces "
               "(make one with `sollol keys create NAME`)")
        raise ValueError(msg)
    return hashlib.sha256(key.encode()).digest()


def _stored_digest(value: Any, where: str) -> bytes:
    text = value.lower() if isinstance(value, str) else ""
    if not (text.startswith(HASH_PREFIX) and _HEX64.fullmatch(text[len(HASH_PREFIX):])):
        raise ValueError(f"{where}: 'hash' as written by `sollol keys create` "
                         f"({HASH_PREFIX} and 64 hex digits)")
    return bytes.fromhex(text[len(HASH_PREFIX):])


def parse_entry(entry: Any, index: int) -> AccessKey:
    """One `api_keys` entry: a plain key (an admin key) or a table; ValueError says why not."""
    where = f"entry {index + 1}"
    if isinstance(entry, str):
        return AccessKey(name=f"key-{index + 1}", digest=_plain_digest(entry, where), admin=True)
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: a key string or a table {{name, hash|key, admin, models}}")
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(_FIELDS))})")
    name = entry.get("name", f"key-{index + 1}")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{where}: 'name' of letters, digits and _.@- (up to 64)")
    where = f"key {name!r}"
    if ("key" in entry) == ("hash" in entry):
        raise ValueError(f"{where}: exactly one of 'hash' or 'key'")
    digest = (_plain_digest(entry["key"], where) if isinstance(entry.get("key"), str)
              else _stored_digest(entry.get("hash"), where))
    admin = entry.get("admin", False)
    if not isinstance(admin, bool):
        raise ValueError(f"{where}: 'admin' true or false")
    models = entry.get("models", ["*"])
    if isinstance(models, str):
        models = [m.strip() for m in models.split(",")]
    if (not isinstance(models, list) or not models
            or not all(isinstance(m, str) and m.strip() for m in models)):
        raise ValueError(f"{where}: 'models' a list of model-name globs, e.g. [\"llama3*\"]")
    return AccessKey(name=name, digest=digest, admin=admin,
                     models=tuple(m.strip() for m in models))


def parse_entries(values: Iterable[Any]) -> list[AccessKey]:
    """Every entry, checking that names and keys are unique."""
    keys = [parse_entry(entry, i) for i, entry in enumerate(values)]
    names: set[str] = set()
    digests: set[bytes] = set()
    for key in keys:
        if key.name in names:
            raise ValueError(f"key names must be unique: {key.name!r} appears twice")
        if key.digest in digests:
            raise ValueError(f"key {key.name!r} is the same key as an earlier entry")
        names.add(key.name)
        digests.add(key.digest)
    return keys


def normalise(values: list[Any]) -> list[dict[str, Any]]:
    """The `api_keys` config check: entries as tables holding hashes, never plain keys."""
    return [{"name": k.name, "hash": HASH_PREFIX + k.digest.hex(), "admin": k.admin,
             "models": list(k.models)} for k in parse_entries(values)]


def redact(values: Any) -> Any:
    """`api_keys` for display: names and scopes only."""
    try:
        return [k.describe() for k in parse_entries(values)]
    except (ValueError, TypeError):
        return "<hidden: api_keys holds secrets>"


class KeyRing:
    """The configured keys, by digest."""

    __slots__ = ("_by_digest", "keys")

    def __init__(self, keys: Iterable[AccessKey] = ()) -> None:
        self.keys = tuple(keys)
        self._by_digest = {k.digest: k for k in self.keys}

    @classmethod
    def from_config(cls, values: Iterable[Any]) -> KeyRing:
        return cls(parse_entries(values))

    def __bool__(self) -> bool:
        return bool(self.keys)

    def find(self, presented: bytes) -> AccessKey | None:
        """The key whose hash matches `presented`, or None."""
        digest = hashlib.sha256(presented).digest()
        key = self._by_digest.get(digest)
        if key is not None and hmac.compare_digest(key.digest, digest):
            return key
        return None


def presented(authorization: bytes | None, api_key: bytes | None) -> list[bytes]:
    """The keys a request carries: `Authorization: Bearer K`, `Basic` with K as the password
    (or the user name when the password is empty), and `x-api-key: K`."""
    found = []
    if authorization:
        scheme, _, rest = authorization.strip().partition(b" ")
        scheme, rest = scheme.lower(), rest.strip()
        if scheme == b"bearer" and rest:
            found.append(rest)
        elif scheme == b"basic" and rest:
            try:
                user, _, password = base64.b64decode(rest, validate=True).partition(b":")
            except (binascii.Error, ValueError):
                user = password = b""
            if password or user:
                found.append(password or user)
    if api_key and api_key.strip():
        found.append(api_key.strip())
    return found


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def open_bind(host: str, api_keys: Iterable[Any]) -> str | None:
    """Why serving on `host` with these keys is unsafe (a wide bind without keys), or None."""
    if is_loopback(host) or list(api_keys):
        return None
    return (f"serving on {host} without an access key would let anyone who can reach it use "
            "every model and pull or delete models")


BIND_FIX = ("create a key with `sollol keys create NAME --admin` (clients send it as "
            "'Authorization: Bearer KEY'), or pass --insecure to serve without keys")


KEY_ENV = "SOLLOL_KEY"
"""The access key SOLLOL's own clients (CLI commands, `sollol.Cluster(gateway=...)`) send to a
running gateway; its admin endpoints need an admin key."""


def gateway_headers(key: str | None = None) -> dict[str, str]:
    """`Authorization: Bearer KEY` for requests to our gateway: `key`, else $SOLLOL_KEY when
    that is set; no header without either."""
    key = (key or os.environ.get(KEY_ENV, "")).strip()
    return {"Authorization": f"Bearer {key}"} if key else {}
