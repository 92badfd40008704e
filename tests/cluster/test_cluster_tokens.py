"""Join tokens: shape, hashed store, revoke, expiry, file mode."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest
from sollol_plugins.cluster_join.errors import BadToken
from sollol_plugins.cluster_join.tokens import JoinToken, TokenStore, join_key

PIN = "0123456789abcdef0123456789abcdef"


def test_created_token_parses_and_its_key_is_the_stored_hash(tmp_path: Path) -> None:
    store = TokenStore.load(tmp_path / "tokens.json")
    text = store.create(PIN, note="rack 2")
    token = JoinToken.parse(text)
    assert text.startswith("sollol-join-") and token.pin == PIN and token.text() == text
    assert store.key_for(token.token_id) == token.key == join_key(token.secret)
    saved = (tmp_path / "tokens.json").read_text()
    assert token.secret not in saved  # only the hash is stored
    assert stat.S_IMODE((tmp_path / "tokens.json").stat().st_mode) == 0o600
    (record,) = TokenStore.load(tmp_path / "tokens.json").records()
    assert record.note == "rack 2" and record.state(time.time()) == "active"
    assert "secret_hash" not in record.public()


def test_revoked_expired_and_unknown_tokens_are_refused(tmp_path: Path) -> None:
    store = TokenStore.load(tmp_path / "tokens.json")
    revoked = JoinToken.parse(store.create(PIN))
    store.revoke(revoked.token_id)
    with pytest.raises(BadToken, match="revoked"):
        TokenStore.load(tmp_path / "tokens.json").key_for(revoked.token_id)
    expiring = JoinToken.parse(store.create(PIN, expires_in=60))
    assert store.key_for(expiring.token_id)
    with pytest.raises(BadToken, match="expired"):
        store.key_for(expiring.token_id, now=time.time() + 61)
    with pytest.raises(BadToken, match="unknown"):
        store.key_for("deadbeef")
    with pytest.raises(KeyError):
        store.revoke("deadbeef")


def test_use_count_persists(tmp_path: Path) -> None:
    store = TokenStore.load(tmp_path / "tokens.json")
    token = JoinToken.parse(store.create(PIN))
    store.count_use(token.token_id)
    store.count_use(token.token_id)
    assert TokenStore.load(tmp_path / "tokens.json").records()[0].uses == 2
    assert json.loads((tmp_path / "tokens.json").read_text())[0]["uses"] == 2


@pytest.mark.parametrize("text", [
    "", "sollol-join-", "sollol-join-1234567.abc.def", "join-12345678." + "a" * 43 + "." + "0" * 32,
    "sollol-join-12345678." + "a" * 42 + "." + "0" * 32,
    "sollol-join-12345678." + "a" * 43 + ".xyz",
])
def test_malformed_tokens_are_refused_with_the_expected_shape(text: str) -> None:
    with pytest.raises(BadToken, match="expected sollol-join-"):
        JoinToken.parse(text)


def test_an_unreadable_state_file_is_a_clear_error(tmp_path: Path) -> None:
    from sollol_plugins.cluster_join.members import MemberStore

    from sollol.errors import PluginError

    (tmp_path / "tokens.json").write_text("{not json")
    (tmp_path / "members.json").write_text('{"members": [{"nom": 1}]}')
    with pytest.raises(PluginError, match=r"tokens.json is unreadable .*make new tokens"):
        TokenStore.load(tmp_path / "tokens.json")
    with pytest.raises(PluginError, match=r"members.json is unreadable .*join again"):
        MemberStore.load(tmp_path / "members.json")
