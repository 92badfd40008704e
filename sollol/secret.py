"""A credential that never prints itself: logs, reprs, JSON and error messages show `***`."""

from __future__ import annotations

import base64
import hmac
from urllib.parse import unquote

REDACTED = "***"


class Secret:
    """A secret string; `reveal()` is the only way to read it (grep for it to audit uses)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED!r})"

    def __str__(self) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(Secret)  # equal secrets must hash alike without hashing the value itself

    def __bool__(self) -> bool:
        return bool(self._value)


def _no_controls(value: str, what: str) -> str:
    if not value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError(f"{what}: a non-empty value without control characters")
    return value


def bearer(key: str) -> Secret:
    """The `Authorization` value for an API key."""
    return Secret("Bearer " + _no_controls(key, "api_key"))


def from_userinfo(userinfo: str) -> Secret:
    """`KEY` or `:KEY` -> Bearer KEY; `USER:PASSWORD` -> HTTP Basic (both %-decoded)."""
    user, colon, password = userinfo.partition(":")
    user, password = unquote(user), unquote(password)
    if colon and user:
        _no_controls(user + password, "user:password")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return Secret("Basic " + token)
    return bearer(password if colon else user)


def split_userinfo(authority_and_path: str) -> tuple[str, Secret | None]:
    """`KEY@host:port/path` -> (`host:port/path`, credentials); no `@`: no credentials."""
    authority, slash, path = authority_and_path.partition("/")
    if "@" not in authority:
        return authority_and_path, None
    userinfo, _, host = authority.rpartition("@")
    return host + slash + path, from_userinfo(userinfo)


def redact_url(text: str) -> str:
    """`openai://KEY@host` -> `openai://***@host` (for messages and listings)."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = REDACTED + "@" + authority.rpartition("@")[2]
    return f"{scheme}{sep}{authority}{slash}{path}"


def scrub(message: str, text: str) -> str:
    """`message` with every appearance of the address `text` replaced by its redacted form."""
    shown = redact_url(text)
    if shown == text:
        return message
    return message.replace(repr(text), repr(shown)).replace(text, shown)
