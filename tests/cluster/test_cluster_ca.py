"""The cluster CA: files, pins, member and gateway certificates that verify against it."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sollol_plugins.cluster_join.ca import (
    GATEWAY_CN,
    ClusterCA,
    ca_pin,
    fingerprint,
    generate_key_pem,
    public_key_pem,
)
from sollol_plugins.cluster_join.errors import JoinRefused


def test_ca_is_made_once_with_private_files(tmp_path: Path) -> None:
    ca = ClusterCA.load_or_create(tmp_path / "cluster")
    names = {"ca.key", "ca.pem", "gateway.key", "gateway.pem"}
    assert {p.name for p in (tmp_path / "cluster").iterdir()} == names
    for name in names:
        assert stat.S_IMODE((tmp_path / "cluster" / name).stat().st_mode) == 0o600
    again = ClusterCA.load_or_create(tmp_path / "cluster")
    assert again.ca_pem == ca.ca_pem and again.pin == ca.pin == ca_pin(ca.ca_pem)
    assert len(ca.pin) == 32 and fingerprint(ca.ca_pem).startswith(ca.pin)
    assert again.gateway_fingerprint == ca.gateway_fingerprint


def test_member_certificate_is_bound_to_its_key_and_signed_by_the_ca(tmp_path: Path) -> None:
    ca = ClusterCA.load_or_create(tmp_path)
    key_pem = generate_key_pem()
    cert = x509.load_pem_x509_certificate(ca.issue("worker-1", public_key_pem(key_pem)).encode())
    ca_cert = x509.load_pem_x509_certificate(ca.ca_pem.encode())
    cert.verify_directly_issued_by(ca_cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "worker-1"
    assert public_key_pem(key_pem) == public_key_pem_of(cert)
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    gateway = x509.load_pem_x509_certificate(ca.gateway_cert_path.read_bytes())
    gateway.verify_directly_issued_by(ca_cert)
    assert gateway.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == GATEWAY_CN


def public_key_pem_of(cert: x509.Certificate) -> str:
    from cryptography.hazmat.primitives import serialization

    return cert.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo,
    ).decode()


def test_bad_public_keys_are_refused(tmp_path: Path) -> None:
    ca = ClusterCA.load_or_create(tmp_path)
    with pytest.raises(JoinRefused, match="not a PEM public key") as info:
        ca.issue("x", "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    assert info.value.status == 400
    from cryptography.hazmat.primitives import serialization

    p384 = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo,
    ).decode()
    with pytest.raises(JoinRefused, match="P-256"):
        ca.issue("x", p384)
