"""Access keys at the gateway: the official clients carrying keys, scopes, model globs, error
shapes per dialect, and keys never showing up in responses or logs."""

from __future__ import annotations

import base64
import logging

import httpx
import ollama
import openai
import pytest

from sollol.core.access import hash_key, new_key

ADMIN, USER, LIMITED = new_key(), new_key(), new_key()
KEYS = [
    {"name": "root", "hash": hash_key(ADMIN), "admin": True},
    {"name": "alice", "key": USER},  # a plain key in the config works too
    {"name": "bob", "hash": hash_key(LIMITED), "models": ["tiny*"]},
]
CHAT = {"model": "tiny:1b", "messages": [{"role": "user", "content": "hi"}], "stream": False}


@pytest.fixture
def gw(emulator, pool_gateway, caplog):
    caplog.set_level(logging.DEBUG)
    node = emulator(models=["tiny:1b", "other:7b"], library=["tiny:1b", "fresh"])
    gateway = pool_gateway(node.address, api_keys=KEYS)
    yield gateway
    for key in (ADMIN, USER, LIMITED):  # whatever happened in the test, never in a log line
        assert key not in caplog.text


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_official_clients_carry_keys(gw):
    oc = ollama.Client(host=gw.url, headers=bearer(USER), timeout=30)
    assert oc.chat(model="tiny:1b", messages=[{"role": "user", "content": "hi"}]).message.content
    assert {m.model for m in oc.list().models} == {"tiny:1b", "other:7b"}
    ac = openai.OpenAI(base_url=gw.url + "/v1", api_key=USER, max_retries=0, timeout=30)
    reply = ac.chat.completions.create(model="tiny:1b",
                                       messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content
    assert {m.id for m in ac.models.list()} == {"tiny:1b", "other:7b"}


def test_the_official_anthropic_client_carries_its_key(gw):
    import anthropic

    client = anthropic.Anthropic(base_url=gw.url, api_key=USER, max_retries=0, timeout=30)
    reply = client.messages.create(model="tiny:1b", max_tokens=16,
                                   messages=[{"role": "user", "content": "hi"}])
    assert reply.content[0].text
    wrong = anthropic.Anthropic(base_url=gw.url, api_key=LIMITED[:-2], max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as err:
        wrong.messages.create(model="tiny:1b", max_tokens=16,
                              messages=[{"role": "user", "content": "hi"}])
    assert err.value.body["error"]["type"] == "authentication_error"  # Anthropic's shape
    limited = anthropic.Anthropic(base_url=gw.url, api_key=LIMITED, max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError):
        limited.messages.create(model="other:7b", max_tokens=16,
                                messages=[{"role": "user", "content": "hi"}])


def test_x_api_key_and_basic_are_accepted(gw):
    anthropic_style = {"x-api-key": USER, "anthropic-version": "2023-06-01"}
    assert httpx.post(gw.url + "/api/chat", json=CHAT, headers=anthropic_style).status_code == 200
    for user, password in (("anyone", USER), (USER, "")):
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        reply = httpx.post(gw.url + "/api/chat", json=CHAT,
                           headers={"Authorization": f"Basic {basic}"})
        assert reply.status_code == 200, reply.text
    assert httpx.post(gw.url + "/api/chat", json=CHAT, auth=("u", USER)).status_code == 200
    message = {"model": "tiny:1b", "max_tokens": 16,
               "messages": [{"role": "user", "content": "hi"}]}
    reply = httpx.post(gw.url + "/v1/messages", json=message, headers=anthropic_style)
    assert reply.status_code == 200 and reply.json()["type"] == "message"
    limited = httpx.post(gw.url + "/v1/messages", json={**message, "model": "other:7b"},
                         headers={"x-api-key": LIMITED})
    assert limited.status_code == 403
    assert limited.json()["error"]["type"] == "permission_error"


def test_missing_or_wrong_keys_get_401_in_each_dialect(gw):
    wrong = USER[:-1] + ("A" if USER[-1] != "A" else "B")
    for headers in ({}, bearer(wrong), {"x-api-key": wrong}, {"Authorization": "Basic !!"},
                    {"Authorization": f"Token {USER}"}):
        reply = httpx.post(gw.url + "/api/chat", json=CHAT, headers=headers)
        assert reply.status_code == 401
        assert reply.headers["www-authenticate"].startswith("Bearer")
        assert "sollol keys create" in reply.json()["error"] and wrong not in reply.text
        reply = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=headers)
        assert reply.status_code == 401
        error = reply.json()["error"]
        assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
        reply = httpx.post(gw.url + "/v1/messages", json=CHAT, headers=headers)
        assert reply.status_code == 401
        assert reply.json()["type"] == "error"
        assert reply.json()["error"]["type"] == "authentication_error"
    with pytest.raises(ollama.ResponseError) as err:
        ollama.Client(host=gw.url, headers=bearer(wrong)).list()
    assert err.value.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gw.url + "/v1", api_key=wrong, max_retries=0).models.list()
    assert httpx.get(gw.url).text == "Ollama is running"  # `GET /` stays open: a liveness probe


def test_inference_keys_cannot_manage_models_or_read_sollol(gw):
    oc = ollama.Client(host=gw.url, headers=bearer(USER), timeout=30)
    for call in (lambda: oc.pull("fresh"), lambda: oc.delete("tiny:1b"),
                 lambda: oc.copy("tiny:1b", "x"), lambda: oc.create(model="x", from_="tiny:1b"),
                 lambda: oc.push("tiny:1b")):
        with pytest.raises(ollama.ResponseError) as err:
            call()
        assert err.value.status_code == 403 and "admin key" in err.value.error
    for path in ("/sollol/state", "/sollol/nodes", "/sollol/events", "/sollol/route?model=x"):
        reply = httpx.get(gw.url + path, headers=bearer(USER))
        assert reply.status_code == 403, path
    admin = ollama.Client(host=gw.url, headers=bearer(ADMIN), timeout=30)
    assert admin.pull("fresh").status == "success"
    assert admin.copy("fresh", "fresh-copy").status == "success"
    assert admin.delete("fresh-copy").status == "success"
    for path in ("/sollol/state", "/sollol/nodes", "/sollol/events"):
        reply = httpx.get(gw.url + path, headers=bearer(ADMIN))
        assert reply.status_code == 200
        for key in (ADMIN, USER, LIMITED):
            assert key not in reply.text and hash_key(key)[7:] not in reply.text


def test_model_globs_limit_use_and_listing(gw):
    oc = ollama.Client(host=gw.url, headers=bearer(LIMITED), timeout=30)
    assert [m.model for m in oc.list().models] == ["tiny:1b"]
    assert oc.generate(model="tiny:1b", prompt="hi").response
    with pytest.raises(ollama.ResponseError) as err:
        oc.generate(model="other:7b", prompt="hi")
    assert err.value.status_code == 403 and "'bob' may not use model 'other:7b'" in err.value.error
    with pytest.raises(ollama.ResponseError):
        oc.show("other:7b")
    ac = openai.OpenAI(base_url=gw.url + "/v1", api_key=LIMITED, max_retries=0, timeout=30)
    assert [m.id for m in ac.models.list()] == ["tiny:1b"]
    with pytest.raises(openai.PermissionDeniedError):
        ac.embeddings.create(model="other:7b", input="x")
    with pytest.raises(openai.NotFoundError):
        ac.models.retrieve("other:7b")  # invisible to this key, as in the list
    # one model, several spellings: the glob decides on the model, not on how it is written
    for spelling in ("TINY:1b", "registry.ollama.ai/library/tiny:1b"):
        reply = httpx.post(gw.url + "/api/show", json={"model": spelling},
                           headers=bearer(LIMITED))
        assert reply.status_code != 403, spelling


def test_without_keys_on_loopback_everything_stays_open(emulator, pool_gateway):
    node = emulator(models=["tiny:1b"])
    gw = pool_gateway(node.address)
    assert ollama.Client(host=gw.url).generate(model="tiny:1b", prompt="hi").response
    assert httpx.get(gw.url + "/sollol/state").status_code == 200


def test_metrics_and_dashboard_need_an_admin_key_and_browsers_get_a_basic_prompt(gw):
    for path in ("/metrics", "/sollol/overview", "/sollol/state"):
        anonymous = httpx.get(gw.url + path)
        assert anonymous.status_code == 401, path
        assert anonymous.headers["www-authenticate"] == 'Basic realm="sollol"'
        assert httpx.get(gw.url + path, headers=bearer(USER)).status_code == 403, path
        assert httpx.get(gw.url + path, auth=("me", ADMIN)).status_code == 200, path
    # API paths challenge with Bearer: a browser must not prompt for them
    assert httpx.get(gw.url + "/api/tags").headers["www-authenticate"] == 'Bearer realm="sollol"'


def test_metrics_public_opens_only_metrics(emulator, pool_gateway):
    node = emulator(models=["tiny:1b"])
    gw = pool_gateway(node.address, api_keys=KEYS, metrics_public=True)
    assert httpx.get(gw.url + "/metrics").status_code == 200
    for path in ("/sollol/overview", "/sollol/state", "/api/tags"):
        assert httpx.get(gw.url + path).status_code == 401, path


def test_a_reload_applies_new_and_revoked_keys(emulator, isolated_config):
    from sollol.config import write_file
    from sollol.core.runtime import ClusterRuntime
    from sollol.gateway import GatewayThread

    node = emulator(models=["tiny:1b"])
    old, new = new_key(), new_key()
    base = {"ollama_nodes": [node.address]}
    write_file(isolated_config, {**base, "api_keys": [
        {"name": "ops", "hash": hash_key(ADMIN), "admin": True}, {"name": "old", "key": old}]})
    with GatewayThread(ClusterRuntime.from_config()) as gw:
        assert httpx.get(gw.url + "/api/tags", headers=bearer(old)).status_code == 200
        write_file(isolated_config, {**base, "api_keys": [
            {"name": "ops", "hash": hash_key(ADMIN), "admin": True}, {"name": "new", "key": new}]})
        report = httpx.post(gw.url + "/sollol/reload", json={}, headers=bearer(ADMIN)).json()
        assert "api_keys" in report["changed"] and "api_keys" not in report["restart_needed"]
        assert httpx.get(gw.url + "/api/tags", headers=bearer(old)).status_code == 401
        assert httpx.get(gw.url + "/api/tags", headers=bearer(new)).status_code == 200


def test_a_reload_cannot_open_a_wide_bind(emulator, isolated_config, caplog):
    from sollol.config import write_file
    from sollol.core.runtime import ClusterRuntime
    from sollol.gateway.app import Gateway

    key = new_key()
    write_file(isolated_config, {"plugins": [], "api_keys": [key]})
    cluster = ClusterRuntime.from_config()
    guard = Gateway(cluster, bind_host="0.0.0.0").guard
    write_file(isolated_config, {"plugins": []})
    emptied = cluster.reloader()
    assert guard.for_config(emptied, insecure=False) is guard and guard.keys
    assert "keeping the old access keys" in caplog.text
    assert not guard.for_config(cluster.reloader(), insecure=True).keys


def test_cli_commands_send_sollol_key_to_the_gateway(gw, monkeypatch):
    from click.testing import CliRunner

    from sollol.cli import build_cli

    cli = build_cli()
    without = CliRunner().invoke(cli, ["status", "--json", "--gateway", gw.url])
    assert without.exit_code != 0 and "SOLLOL_KEY" in without.output
    monkeypatch.setenv("SOLLOL_KEY", USER)  # an inference key: refused, with the same hint
    refused = CliRunner().invoke(cli, ["nodes", "add", "127.0.0.1:9", "--gateway", gw.url])
    assert refused.exit_code == 1 and "admin key" in refused.output
    monkeypatch.setenv("SOLLOL_KEY", ADMIN)
    status = CliRunner().invoke(cli, ["status", "--json", "--gateway", gw.url])
    assert status.exit_code == 0, status.output
    nodes = CliRunner().invoke(cli, ["nodes", "--json", "--gateway", gw.url])
    assert nodes.exit_code == 0 and '"healthy"' in nodes.output
