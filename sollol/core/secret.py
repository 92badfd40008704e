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


def _userinfo_span(text: str) -> tuple[int, int] | None:
    """Where the credentials of an address are: between the scheme (or the last `/`) and the
    last `@`, also in misspelled addresses (`openai//KEY@h`)."""
    at = text.rfind("@")
    if at < 0:
        return None
    scheme_end = text.find("://", 0, at)
    return (scheme_end + 3 if scheme_end >= 0 else text.rfind("/", 0, at) + 1), at


def redact_url(text: str) -> str:
    """`openai://KEY@host` -> `openai://***@host`."""
    span = _userinfo_span(text)
    return text if span is None else text[:span[0]] + REDACTED + text[span[1]:]


def scrub(message: str, text: str) -> str:
    """`message` (about the address `text`) with the address's credentials replaced by `***`,
    wherever and however often they appear (hints may quote a corrected address)."""
    span = _userinfo_span(text)
    if span is None or span[0] == span[1]:
        return message
    secret = text[span[0]:span[1]]
    user, colon, password = secret.partition(":")
    for part in (secret, password if colon else user):  # a user name is no secret
        if part:
            message = message.replace(part, REDACTED)
    return message
