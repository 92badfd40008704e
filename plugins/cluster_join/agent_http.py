"""The worker's HTTP calls to the gateway: challenge, join, and signed member messages."""

from __future__ import annotations

from typing import Any

import attrs
import httpx

from .handshake import SIGNATURE_HEADER, sign_message

TIMEOUT = 10.0


class Unreachable(Exception):
    """The gateway did not answer (down, restarting, link cut) or failed (5xx): try again."""


@attrs.frozen
class Answer:
    status: int
    data: dict[str, Any]

    @property
    def error(self) -> str:
        return str(self.data.get("error") or self.data.get("detail") or f"HTTP {self.status}")


@attrs.define
class GatewayCalls:
    """Calls to one gateway; `key` signs member messages (this machine's private key, PEM)."""

    url: str
    key: bytes = attrs.field(repr=False)
    _client: httpx.AsyncClient = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        # a fresh connection per call: a kept one may have been closed by the gateway (idle
        # keep-alive, a restart) and would fail the next heartbeat for nothing
        self._client = httpx.AsyncClient(base_url=self.url.rstrip("/"), timeout=TIMEOUT,
                                         trust_env=False,
                                         limits=httpx.Limits(max_keepalive_connections=0))

    async def close(self) -> None:
        await self._client.aclose()

    async def _send(self, method: str, path: str, **kwargs: Any) -> Answer:
        try:
            reply = await self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            cause = exc.__cause__ or exc.__context__
            detail = str(exc) or repr(cause.__cause__ or cause if cause else exc)
            raise Unreachable(f"{self.url}: {type(exc).__name__}: {detail}") from None
        try:
            data = reply.json()
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        if reply.status_code >= 500:
            raise Unreachable(f"{self.url}: HTTP {reply.status_code} {data.get('error', '')}")
        return Answer(reply.status_code, data)

    async def challenge(self) -> str:
        answer = await self._send("GET", "/sollol/cluster/challenge")
        nonce = answer.data.get("nonce")
        if answer.status != 200 or not isinstance(nonce, str):
            raise Unreachable(f"{self.url} gave no join challenge ({answer.error}); is it a "
                              "SOLLOL gateway with the cluster_join plugin?")
        return nonce

    async def join(self, body: dict[str, Any]) -> Answer:
        return await self._send("POST", "/sollol/cluster/join", json=body)

    async def signed(self, what: str, payload: dict[str, Any], timeout: float = TIMEOUT,
                     ) -> Answer:
        """POST a signed member message to /sollol/cluster/<what>."""
        body, signature = sign_message(self.key, payload)
        return await self._send("POST", f"/sollol/cluster/{what}", content=body,
                                timeout=timeout,
                                headers={SIGNATURE_HEADER: signature,
                                         "content-type": "application/json"})
