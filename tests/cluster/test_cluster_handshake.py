"""The join proofs and members' signed messages, as both sides use them."""

from __future__ import annotations

from pathlib import Path

import pytest
from sollol_plugins.cluster_join.ca import ClusterCA, generate_key_pem, public_key_pem
from sollol_plugins.cluster_join.errors import BadSignature, BadToken, JoinRefused
from sollol_plugins.cluster_join.handshake import (
    SeqGuard,
    canonical,
    check_answer,
    check_join_proof,
    join_request,
    sign_answer,
    sign_message,
    verify_message,
)
from sollol_plugins.cluster_join.nonces import NonceStore
from sollol_plugins.cluster_join.tokens import JoinToken, TokenStore

SERVICES = {"rpc": {"port": 50052}, "pool": [{"kind": "ollama", "port": 11434}]}
DEVICES = [{"name": "CPU", "backend": "cpu", "memory_total": 8 << 30, "memory_free": 4 << 30}]


def test_canonical_json_is_sorted_and_compact() -> None:
    assert canonical({"b": 1, "a": [1, {"d": 2, "c": 3}]}) == b'{"a":[1,{"c":3,"d":2}],"b":1}'


def make_token(tmp_path: Path) -> tuple[ClusterCA, TokenStore, JoinToken]:
    ca = ClusterCA.load_or_create(tmp_path / "ca")
    store = TokenStore.load(tmp_path / "tokens.json")
    return ca, store, JoinToken.parse(store.create(ca.pin))


def test_join_round_trip_and_tampering(tmp_path: Path) -> None:
    ca, store, token = make_token(tmp_path)
    key = public_key_pem(generate_key_pem())
    body = join_request(token, "bm9uY2U=", "w1", key, 50053, SERVICES, DEVICES)
    check_join_proof(store.key_for(body["token_id"]), body)
    for field, value in [("name", "w2"), ("tunnel_port", 1), ("nonce", "b3RoZXI=")]:
        with pytest.raises(BadToken, match="proof"):
            check_join_proof(store.key_for(token.token_id), {**body, field: value})
    other = JoinToken.parse(store.create(ca.pin))
    with pytest.raises(BadToken, match="wrong token"):
        check_join_proof(store.key_for(other.token_id), body)
    answer = sign_answer(store.key_for(token.token_id), {
        "status": "member", "name": "w1", "certificate": ca.issue("w1", key),
        "ca_certificate": ca.ca_pem, "gateway_fingerprint": ca.gateway_fingerprint,
        "heartbeat_interval": 3.0,
    }, body["nonce"])
    check_answer(token, answer, body["nonce"])
    with pytest.raises(JoinRefused, match="does not prove"):
        check_answer(token, answer, "b3RoZXI=")  # an answer to another request
    other_ca = ClusterCA.load_or_create(tmp_path / "other")
    swapped = sign_answer(token.key, {**answer, "ca_certificate": other_ca.ca_pem}, body["nonce"])
    with pytest.raises(JoinRefused, match="pin"):
        check_answer(token, swapped, body["nonce"])


def test_signed_messages_verify_with_key_or_certificate(tmp_path: Path) -> None:
    ca = ClusterCA.load_or_create(tmp_path)
    private = generate_key_pem()
    cert = ca.issue("w1", public_key_pem(private))
    body, signature = sign_message(private, {"name": "w1", "devices": DEVICES})
    for public in (cert, public_key_pem(private)):
        payload = verify_message(public, body, signature)
        assert payload["name"] == "w1" and isinstance(payload["seq"], int)
    with pytest.raises(BadSignature, match="does not match"):
        verify_message(cert, body.replace(b"w1", b"w2"), signature)
    other_body, other_signature = sign_message(generate_key_pem(), {"name": "w1"})
    with pytest.raises(BadSignature, match="does not match"):
        verify_message(cert, other_body, other_signature)
    with pytest.raises(BadSignature, match="missing"):
        verify_message(cert, body, None)
    with pytest.raises(BadSignature, match="base64"):
        verify_message(cert, body, "%%%")


def test_seq_guard_refuses_replays() -> None:
    seqs = SeqGuard()
    seqs.check("w1", 10)
    seqs.check("w2", 5)
    with pytest.raises(BadSignature, match="replay"):
        seqs.check("w1", 10)
    with pytest.raises(BadSignature, match="replay"):
        seqs.check("w1", 9)
    seqs.check("w1", 11)
    assert seqs.last("w1") == 11


def test_nonces_are_single_use_bounded_and_expire() -> None:
    nonces = NonceStore(ttl=30, limit=3)
    first = nonces.issue("a", now=0)
    nonces.take(first, now=1)
    with pytest.raises(JoinRefused, match="already used"):
        nonces.take(first, now=1)
    late = nonces.issue("a", now=0)
    with pytest.raises(JoinRefused, match="expired"):
        nonces.take(late, now=31)
    issued = [nonces.issue(f"peer{i}", now=40) for i in range(10)]
    assert len(nonces) == 3
    with pytest.raises(JoinRefused):
        nonces.take(issued[0], now=41)
    nonces.take(issued[-1], now=41)
    with pytest.raises(JoinRefused):
        nonces.take(12, now=41)


def test_one_address_holds_a_few_open_nonces_at_most() -> None:
    nonces = NonceStore(ttl=30, per_peer=2)
    held = [nonces.issue("10.0.0.9", now=0), nonces.issue("10.0.0.9", now=0)]
    with pytest.raises(JoinRefused, match="unused challenges") as info:
        nonces.issue("10.0.0.9", now=1)
    assert info.value.status == 429
    other = nonces.issue("10.0.0.7", now=1)  # other machines are not held up
    nonces.take(held[0], now=2)
    nonces.issue("10.0.0.9", now=2)  # one used: room for one more
    nonces.take(other, now=3)
    assert nonces.issue("10.0.0.9", now=33) and nonces.issue("10.0.0.9", now=33)  # expired
    assert len(nonces) == 2


def test_the_log_budget_holds_back_a_flood_and_says_how_much() -> None:
    from sollol_plugins.cluster_join.limits import LogBudget

    budget = LogBudget(lines=3, window=10)
    taken = [budget.take(now=1) for _ in range(10)]
    assert [logged for logged, _ in taken] == [True] * 3 + [False] * 7
    assert budget.take(now=11.5) == (True, 7)  # the next window tells what was held back
    assert budget.take(now=12) == (True, 0)
