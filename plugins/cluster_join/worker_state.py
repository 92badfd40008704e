"""A joined machine's own files (`sollol join --state-dir`), every one mode 0600.

`member.key` is made once and never leaves the machine (the gateway issues certificates for its
public key, so a machine keeps its identity across rejoins); `member.pem`, `ca.pem` and
`membership.json` (gateway URL, name, the gateway's client-certificate pin, heartbeat interval)
come from the last join answer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import platformdirs
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .ca import ca_pin, generate_key_pem, public_key_pem
from .errors import JoinRefused
from .tokens import JoinToken, write_private
from .tunnel import TlsIdentity


def default_state_dir() -> Path:
    return Path(platformdirs.user_data_dir("sollol")) / "join"


@attrs.frozen
class Membership:
    """What a join answer made this machine: a member of the gateway at `url`."""

    url: str
    name: str
    gateway_fingerprint: str
    heartbeat_interval: float


@attrs.define
class WorkerState:
    folder: Path

    @property
    def key_path(self) -> Path:
        return self.folder / "member.key"

    @property
    def cert_path(self) -> Path:
        return self.folder / "member.pem"

    @property
    def ca_path(self) -> Path:
        return self.folder / "ca.pem"

    def key(self) -> bytes:
        """This machine's private key, made on first use."""
        if not self.key_path.exists():
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_private(self.key_path, generate_key_pem())
        return self.key_path.read_bytes()

    def public_key(self) -> str:
        return public_key_pem(self.key())

    def identity(self) -> TlsIdentity:
        return TlsIdentity(self.cert_path, self.key_path, self.ca_path)

    def certificate(self) -> str | None:
        return self.cert_path.read_text() if self.cert_path.exists() else None

    def load(self, token: JoinToken) -> Membership | None:
        """The saved membership, if complete and of the token's cluster (its CA pin)."""
        try:
            data = json.loads((self.folder / "membership.json").read_text())
            ca_pem = self.ca_path.read_text()
        except (OSError, ValueError):
            return None
        if not self.cert_path.exists() or ca_pin(ca_pem) != token.pin:
            return None
        try:
            return Membership(data["url"], data["name"], data["gateway_fingerprint"],
                              float(data["heartbeat_interval"]))
        except (KeyError, TypeError, ValueError):
            return None

    def save(self, url: str, answer: dict[str, Any]) -> Membership:
        """Keep a member answer (already proven by `check_answer`): its certificate must be
        for our key and signed by the CA it came with."""
        cert_pem, ca_pem = answer.get("certificate"), answer.get("ca_certificate")
        if not isinstance(cert_pem, str) or not isinstance(ca_pem, str):
            raise JoinRefused("the gateway's answer has no certificate")
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        ca = x509.load_pem_x509_certificate(ca_pem.encode())
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, Exception) as exc:
            raise JoinRefused(f"the issued certificate is not signed by the cluster CA ({exc})") \
                from None
        ours = cert.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
        if ours.decode().strip() != self.public_key().strip():
            raise JoinRefused("the issued certificate is not for this machine's key")
        membership = Membership(url, str(answer["name"]), str(answer["gateway_fingerprint"]),
                                float(answer.get("heartbeat_interval") or 3.0))
        write_private(self.cert_path, cert_pem.encode())
        write_private(self.ca_path, ca_pem.encode())
        write_private(self.folder / "membership.json",
                      json.dumps(attrs.asdict(membership), indent=2).encode())
        return membership
