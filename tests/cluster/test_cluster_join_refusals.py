"""A real gateway refuses wrong, revoked and expired tokens, replays and forged messages."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from sollol_plugins.cluster_join.ca import generate_key_pem


def make_token(client: Any, **body: Any) -> str:
    reply = client.post("/sollol/cluster/tokens", json=body)
    assert reply.status_code == 201, reply.text
    return reply.json()["token"]


def nothing_joined(client: Any) -> None:
    assert client.get("/sollol/cluster/members").json()["members"] == []
    assert client.get("/sollol/cluster/pending").json()["pending"] == []
    assert [n for n in client.get("/sollol/nodes").json()["nodes"] if n.get("member")] == []


def test_wrong_revoked_and_expired_tokens_are_refused_and_logged(
    join_gateway: Callable[..., Any], admin: Callable[..., Any], worker: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = join_gateway()
    client = admin(gateway)
    good = make_token(client, note="the real one")
    token_id, secret, pin = good.removeprefix("sollol-join-").split(".")
    wrong = f"sollol-join-{token_id}.{'A' * 43}.{pin}"
    unknown = f"sollol-join-0badc0de.{secret}.{pin}"
    revoked = make_token(client)
    client.delete(f"/sollol/cluster/tokens/{revoked.split('.')[0][-8:]}").raise_for_status()
    expired = make_token(client, expires=0.5)
    time.sleep(0.6)
    caplog.set_level(logging.WARNING, logger="sollol.cluster")
    cases = {wrong: "proof does not match", unknown: "unknown join token",
             revoked: "is revoked", expired: "is expired"}
    for token, reason in cases.items():
        reply = worker(gateway.url, "intruder").join(token)
        assert reply.status_code == 401, reply.text
        assert reason in reply.json()["error"]
    logged = [r.getMessage() for r in caplog.records if r.name == "sollol.cluster"]
    for reason in cases.values():
        assert any("join from 127.0.0.1 refused (401)" in line and reason in line
                   for line in logged), logged
    assert not any(secret in line for line in logged)
    nothing_joined(client)
    listed = client.get("/sollol/cluster/tokens").json()["tokens"]
    assert {t["state"] for t in listed} == {"active", "revoked", "expired"}
    assert secret not in str(listed)


def test_a_replayed_join_is_refused(join_gateway: Callable[..., Any],
                                    admin: Callable[..., Any], worker: Any) -> None:
    gateway = join_gateway()
    client = admin(gateway)
    token = make_token(client)
    machine = worker(gateway.url, "w1")
    body = machine.join_body(token)
    assert machine.post_join(body).status_code == 200
    client.delete("/sollol/cluster/members/w1").raise_for_status()
    replay = worker(gateway.url, "w1").post_join(body)  # captured on the wire: same nonce
    assert replay.status_code == 401
    assert "already used nonce" in replay.json()["error"]
    assert client.get("/sollol/cluster/members").json()["members"] == []


def test_signed_message_replays_and_foreign_keys_are_refused(
    join_gateway: Callable[..., Any], admin: Callable[..., Any], worker: Any,
) -> None:
    gateway = join_gateway()
    client = admin(gateway)
    machine = worker(gateway.url, "w1")
    assert machine.join(make_token(client)).status_code == 200
    body, signature = machine.signed("heartbeat", {"devices": []})
    assert machine.send("heartbeat", body, signature).status_code == 200
    replay = machine.send("heartbeat", body, signature)
    assert replay.status_code == 401 and "replay" in replay.json()["error"]
    older = machine.signed("leave", {"seq": 1})
    reply = machine.send("leave", *older)
    assert reply.status_code == 401 and "not newer" in reply.json()["error"]
    huge = machine.send("heartbeat", b"x" * (65 * 1024), signature)
    assert huge.status_code == 413  # public endpoints take small bodies only
    forged = machine.signed("leave", key=generate_key_pem())  # another machine's key
    reply = machine.send("leave", *forged)
    assert reply.status_code == 401 and "does not match" in reply.json()["error"]
    unsigned = machine.send("leave", body, "")
    assert unsigned.status_code == 401 and "missing" in unsigned.json()["error"]
    assert [m["name"] for m in client.get("/sollol/cluster/members").json()["members"]] == ["w1"]
    assert machine.message("leave").status_code == 200
    assert client.get("/sollol/cluster/members").json()["members"] == []
    gone = machine.message("heartbeat")
    assert gone.status_code == 404 and "join again" in gone.json()["error"]


def test_a_name_taken_by_another_key_is_409_and_a_removed_member_403(
    join_gateway: Callable[..., Any], admin: Callable[..., Any], worker: Any,
) -> None:
    gateway = join_gateway()
    client = admin(gateway)
    token = make_token(client)
    first = worker(gateway.url, "w1")
    assert first.join(token).status_code == 200
    taken = worker(gateway.url, "w1").join(token)
    assert taken.status_code == 409 and "taken" in taken.json()["error"]
    again = first.join(token)  # the same machine (same key) joining again is fine
    assert again.status_code == 200
    client.delete("/sollol/cluster/members/w1").raise_for_status()
    refused = first.message("heartbeat")
    assert refused.status_code == 403 and "removed" in refused.json()["error"]
