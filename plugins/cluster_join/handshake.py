"""The join handshake and members' signed messages; both the gateway and the worker use these.

Join (the token authenticates it):
    worker:  body = join_request(token, nonce, name, public_key, tunnel_port, services, devices)
    gateway: check_join_proof(key, body)         key = TokenStore.key_for(body["token_id"])
    gateway: answer = sign_answer(key, answer, body["nonce"])
    worker:  check_answer(token, answer, nonce)   (proof, and the CA matches the token's pin)

Member messages (its certificate's key authenticates them):
    worker:  body, signature = sign_message(private_key_pem, {"name": ..., ...})
             POST body with header `X-Sollol-Signature: <signature>`
    gateway: payload = verify_message(public_key_or_cert_pem, body, signature)
             seqs.check(payload["name"], payload["seq"])   (strictly increasing: no replays)

The canonical JSON of an object is `json.dumps(obj, sort_keys=True, separators=(",", ":"))`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .ca import ca_pin, load_public_key
from .errors import BadSignature, BadToken, JoinRefused
from .tokens import JoinToken

SIGNATURE_HEADER = "X-Sollol-Signature"
"""The HTTP header that carries a member message's signature (base64)."""


def canonical(obj: Mapping[str, Any]) -> bytes:
    """The canonical JSON bytes of an object (sorted keys, no spaces)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise BadSignature("signature or proof must be base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadSignature("signature or proof is not base64") from None


def _mac(key: bytes, obj: Mapping[str, Any]) -> bytes:
    return hmac.new(key, canonical(obj), hashlib.sha256).digest()


def _without_proof(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "proof"}


def join_request(
    token: JoinToken, nonce: str, name: str, public_key: str, tunnel_port: int,
    services: Mapping[str, Any], devices: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """The body of `POST /sollol/cluster/join`, with its proof."""
    body: dict[str, Any] = {
        "token_id": token.token_id, "nonce": nonce, "name": name, "public_key": public_key,
        "tunnel_port": tunnel_port, "services": dict(services), "devices": list(devices),
    }
    body["proof"] = _b64(_mac(token.key, body))
    return body


def check_join_proof(key: bytes, body: Mapping[str, Any]) -> None:
    """Raise BadToken (401) unless the body's proof was made with `key`."""
    proof = body.get("proof")
    if not isinstance(proof, str) or not hmac.compare_digest(
        _b64(_mac(key, _without_proof(body))).encode(), proof.encode(),
    ):
        raise BadToken("join proof does not match the token (wrong token?)")


def sign_answer(key: bytes, answer: Mapping[str, Any], nonce: str) -> dict[str, Any]:
    """The gateway's answer with its proof: HMAC over the answer plus the request's nonce."""
    signed = dict(answer)
    signed["proof"] = _b64(_mac(key, {**_without_proof(answer), "request_nonce": nonce}))
    return signed


def check_answer(token: JoinToken, answer: Mapping[str, Any], nonce: str) -> None:
    """Worker side: the answer comes from the token's gateway (proof, and the CA's pin).

    Raises JoinRefused; a man in the middle cannot swap the CA certificate or the answer.
    """
    proof = _unb64(answer.get("proof"))
    expected = _mac(token.key, {**_without_proof(answer), "request_nonce": nonce})
    if not hmac.compare_digest(proof, expected):
        raise JoinRefused("the gateway's answer does not prove it holds the token")
    ca_pem = answer.get("ca_certificate")
    if ca_pem is not None and ca_pin(ca_pem) != token.pin:
        raise JoinRefused("the gateway's CA certificate does not match the token's pin")


def new_seq() -> int:
    """A message seq: the sender's clock in nanoseconds (strictly increasing per member)."""
    return time.time_ns()


def sign_message(private_key_pem: bytes, payload: Mapping[str, Any]) -> tuple[bytes, str]:
    """Sign a member message; adds `seq` when missing. Returns (body bytes, signature b64)."""
    data = dict(payload)
    data.setdefault("seq", new_seq())
    body = canonical(data)
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        msg = "a member key must be an EC private key"
        raise TypeError(msg)
    return body, _b64(key.sign(body, ec.ECDSA(hashes.SHA256())))


def verify_message(public_key: str, body: bytes, signature: str | None) -> dict[str, Any]:
    """Check a member message's signature with its key (PEM key or certificate); its payload.

    Raises BadSignature (401) for a missing or wrong signature or a malformed body.
    """
    if not signature:
        raise BadSignature(f"missing {SIGNATURE_HEADER} header")
    try:
        load_public_key(public_key).verify(_unb64(signature), body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise BadSignature("the message's signature does not match the member's key") from None
    return parse_message(body)


def parse_message(body: bytes) -> dict[str, Any]:
    """A member message's payload (not verified): an object with a str name and an int seq."""
    try:
        payload = json.loads(body)
    except ValueError:
        raise BadSignature("the message body is not JSON", 400) from None
    if not isinstance(payload, dict):
        raise BadSignature("the message body must be a JSON object", 400)
    if not isinstance(payload.get("name"), str) or type(payload.get("seq")) is not int:
        raise BadSignature("the message needs a string 'name' and an integer 'seq'", 400)
    return payload


@attrs.define
class SeqGuard:
    """The last seq seen per member: a message whose seq is not larger is a replay."""

    _last: dict[str, int] = attrs.field(factory=dict)

    def check(self, name: str, seq: int) -> None:
        """Accept `seq` for `name` (and remember it), or raise BadSignature for a replay."""
        if seq <= self._last.get(name, -1):
            raise BadSignature(f"message seq {seq} is not newer than the last one (replay?)")
        self._last[name] = seq

    def last(self, name: str) -> int | None:
        return self._last.get(name)

    def set_last(self, name: str, seq: int) -> None:
        """Restore a member's last seq (from the persisted state)."""
        self._last[name] = seq

    def forget(self, name: str) -> None:
        self._last.pop(name, None)
