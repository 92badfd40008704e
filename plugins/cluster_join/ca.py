"""The cluster's small CA: EC P-256 keys, the gateway's client certificate, member certificates.

Files in the cluster state dir (all 0600): `ca.key`/`ca.pem` (self-signed, 10 years) and
`gateway.key`/`gateway.pem` (CN `sollol-gateway`, client auth), made on first need. A member's
certificate is issued for the public key it sent (its private key never leaves it): CN = its
name, 1 year, server and client auth. A certificate's identity is its fingerprint, the SHA-256
of its DER bytes (hex); the token's pin is the first 16 bytes of the CA's fingerprint.
"""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import JoinRefused
from .tokens import write_private

GATEWAY_CN = "sollol-gateway"
_DAY = datetime.timedelta(days=1)


def generate_key_pem() -> bytes:
    """A new EC P-256 private key, PEM (PKCS8, unencrypted: store it 0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_pem(private_pem: bytes) -> str:
    """The public key (PEM text) of a private key in PEM."""
    key = serialization.load_pem_private_key(private_pem, password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo,
    ).decode()


def fingerprint(cert_pem: str | bytes) -> str:
    """SHA-256 of a certificate's DER bytes, hex: the identity a peer is pinned to."""
    data = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
    cert = x509.load_pem_x509_certificate(data)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def ca_pin(ca_pem: str | bytes) -> str:
    """The pin a join token carries: the first 16 bytes (32 hex) of the CA's fingerprint."""
    return fingerprint(ca_pem)[:32]


def load_public_key(pem: str) -> ec.EllipticCurvePublicKey:
    """An EC P-256 public key from PEM (a key or a certificate); JoinRefused (400) otherwise."""
    data = pem.encode()
    try:
        if b"CERTIFICATE" in data:
            key = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except ValueError:
        raise JoinRefused("public_key is not a PEM public key", 400) from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise JoinRefused("public_key must be an EC P-256 key", 400)
    return key


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@attrs.define
class ClusterCA:
    """The CA key and certificate plus the gateway's client certificate, from a state dir."""

    folder: Path
    _key: ec.EllipticCurvePrivateKey = attrs.field(repr=False)
    ca_pem: str

    @classmethod
    def load_or_create(cls, folder: Path) -> ClusterCA:
        """Read the CA from `folder`, making it (and the gateway's certificate) on first use."""
        key_path, cert_path = folder / "ca.key", folder / "ca.pem"
        if not key_path.exists():
            key_pem = generate_key_pem()
            key = serialization.load_pem_private_key(key_pem, password=None)
            cert = _self_signed(key)
            write_private(key_path, key_pem)
            write_private(cert_path, _pem(cert).encode())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        ca = cls(folder, key, cert_path.read_text())
        ca._ensure_gateway_cert()
        return ca

    @property
    def pin(self) -> str:
        """The CA pin join tokens carry."""
        return ca_pin(self.ca_pem)

    @property
    def gateway_key_path(self) -> Path:
        return self.folder / "gateway.key"

    @property
    def gateway_cert_path(self) -> Path:
        return self.folder / "gateway.pem"

    @property
    def ca_cert_path(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def gateway_fingerprint(self) -> str:
        """The fingerprint workers require of the gateway's client certificate."""
        return fingerprint(self.gateway_cert_path.read_text())

    def _ensure_gateway_cert(self) -> None:
        if self.gateway_cert_path.exists() and self.gateway_key_path.exists():
            return
        key_pem = generate_key_pem()
        cert = self._issue(public_key_pem(key_pem), GATEWAY_CN, 3650, server=False)
        write_private(self.gateway_key_path, key_pem)
        write_private(self.gateway_cert_path, cert.encode())

    def issue(self, name: str, public_key: str, days: int = 365) -> str:
        """A member certificate (PEM) for `public_key`: CN = name, server and client auth."""
        return self._issue(public_key, name, days, server=True)

    def _issue(self, public_key: str, common_name: str, days: int, server: bool) -> str:
        now = datetime.datetime.now(datetime.UTC)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if server:
            usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
        issuer = x509.load_pem_x509_certificate(self.ca_pem.encode()).subject
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(issuer)
            .public_key(load_public_key(public_key))
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + days * _DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.KeyUsage(True, False, False, False, True, False, False, False, False),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        return _pem(cert)


def _self_signed(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = _name("sollol cluster CA")
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(now + 3650 * _DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
