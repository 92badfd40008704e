"""The cluster-join plugin's exceptions; the gateway turns them into HTTP answers."""

from __future__ import annotations

from sollol.errors import SollolError


class JoinRefused(SollolError):
    """A join or a member's message is refused; `status` is the HTTP status to answer with.

    The message is safe to show the peer and to log: it never contains a secret.
    """

    def __init__(self, message: str, status: int = 401) -> None:
        self.status = status
        super().__init__(message)


class BadToken(JoinRefused):
    """A join token is malformed, unknown, revoked or expired (HTTP 401)."""


class BadSignature(JoinRefused):
    """A member's message has a bad signature, an old seq or a bad shape (HTTP 401)."""
