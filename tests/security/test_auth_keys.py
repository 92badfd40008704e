"""Access keys without a gateway: config entries, hashing, the headers that carry a key,
`sollol keys create|list|revoke`, secrets kept out of config output and errors, and the
refusal to serve beyond loopback without a key."""

from __future__ import annotations

import base64
import os
import sys
import time

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from sollol.cli import build_cli
from sollol.config import load_config, read_file
from sollol.core import access
from sollol.core.access import AccessKey, KeyRing, hash_key, new_key, presented
from sollol.core.processes import free_port
from sollol.core.secret import Secret
from sollol.errors import ConfigError

cli = build_cli()


def test_entries_plain_hashed_and_tables():
    key = new_key()
    assert key.startswith("sollol-") and len(key) > 40 and new_key() != key
    keys = access.parse_entries(["a-plain-key-of-16+", {"name": "x", "hash": hash_key(key),
                                                         "models": "llama3*, qwen*"}])
    assert keys[0].admin and keys[0].name == "key-1" and keys[0].models == ("*",)
    assert not keys[1].admin and keys[1].models == ("llama3*", "qwen*")
    ring = KeyRing(keys)
    assert ring.find(key.encode()) is keys[1]
    assert ring.find(b"a-plain-key-of-16+") is keys[0]
    assert ring.find(key.encode() + b"x") is None and ring.find(b"") is None
    assert not KeyRing() and ring


@pytest.mark.parametrize(("entry", "says"), [
    ("short", "at least 16"), ("has a space in it ok", "without spaces"),
    ({"name": "x"}, "exactly one of"), ({"name": "x", "key": "k" * 20, "hash": "sha256:0"},
                                        "exactly one of"),
    ({"name": "x", "hash": "md5:abc"}, "'hash'"), ({"name": "x", "key": "k" * 20, "admin": "y"},
                                                   "'admin'"),
    ({"name": "x", "key": "k" * 20, "models": []}, "'models'"),
    ({"name": "x", "key": "k" * 20, "model": ["a"]}, "unknown field"),
    ({"name": "bad name", "key": "k" * 20}, "'name'"), (42, "a key string or a table"),
])
def test_bad_entries_are_config_errors_that_never_echo_the_key(entry, says):
    with pytest.raises(ConfigError) as err:
        load_config(overrides={"api_keys": [entry]})
    assert says in str(err.value)
    assert "k" * 20 not in str(err.value) and "has a space" not in str(err.value)


def test_duplicates_are_refused():
    with pytest.raises(ValueError, match="unique"):
        access.parse_entries([{"name": "a", "key": "k" * 20}, {"name": "a", "key": "j" * 20}])
    with pytest.raises(ValueError, match="same key"):
        access.parse_entries([{"name": "a", "key": "k" * 20}, {"name": "b", "key": "k" * 20}])


def test_env_keys_are_hashed_at_load_and_redacted_in_config_show(monkeypatch):
    secret = new_key()
    monkeypatch.setenv("SOLLOL_API_KEYS", f"{secret},{new_key()}")
    config = load_config()
    assert [e["name"] for e in config["api_keys"]] == ["key-1", "key-2"]
    assert secret not in repr(config.values)
    assert config["api_keys"][0]["hash"] == hash_key(secret)
    result = CliRunner().invoke(cli, ["config", "show", "--json"])
    assert result.exit_code == 0 and secret not in result.output
    assert hash_key(secret) not in result.output and '"key-1"' in result.output
    monkeypatch.setenv("SOLLOL_API_KEYS", "too-short")
    result = CliRunner().invoke(cli, ["config", "show"])
    assert result.exit_code == 2 and "too-short" not in result.output


def test_model_globs_match_every_spelling_of_a_model():
    key = AccessKey("k", b"x", models=("llama3*", "qwen2:7b"))
    for name in ("llama3", "LLAMA3:latest", "llama3.2:1b", "registry.ollama.ai/library/llama3",
                 "qwen2:7b", "library/qwen2:7b"):
        assert key.allows_model(name), name
    for name in ("qwen2", "qwen2:14b", "mistral", "x/llama3", "not-llama3"):
        assert not key.allows_model(name), name
    assert AccessKey("all", b"x").allows_model("anything at all")


def test_the_headers_that_carry_a_key():
    basic = base64.b64encode(b"user:pw").decode().encode()
    assert presented(b"Bearer abc", None) == [b"abc"]
    assert presented(b"bearer   abc ", b" def ") == [b"abc", b"def"]
    assert presented(b"Basic " + basic, None) == [b"pw"]
    assert presented(b"Basic " + base64.b64encode(b"onlyuser:"), None) == [b"onlyuser"]
    assert presented(b"Basic not-base64!", None) == []
    assert presented(b"Digest abc", None) == [] and presented(None, None) == []


@given(st.binary(max_size=200), st.one_of(st.none(), st.binary(max_size=200)))
def test_no_header_value_breaks_key_extraction(auth, api_key):
    found = presented(auth, api_key)
    assert all(isinstance(k, bytes) and k for k in found)
    ring = KeyRing([AccessKey("k", b"\0" * 32)])
    assert all(ring.find(k) is None for k in found)


@given(st.text(min_size=16, max_size=80).filter(lambda k: k == k.strip() and
                                                 not any(c.isspace() for c in k)))
def test_a_key_matches_only_itself(key):
    ring = KeyRing.from_config([key])
    assert ring.find(key.encode()) is not None
    assert ring.find((key + "x").encode()) is None and ring.find(key[:-1].encode()) is None


def test_secret_never_prints_itself():
    secret = Secret("s3cr3t-value")
    assert "s3cr3t" not in f"{secret} {secret!r} {[secret]} {({'k': secret})}"
    assert secret.reveal() == "s3cr3t-value" and secret == Secret("s3cr3t-value")
    assert secret != Secret("other")


# ---- sollol keys


def test_keys_create_list_revoke(isolated_config, monkeypatch):
    runner = CliRunner()
    made = runner.invoke(cli, ["keys", "create", "alice", "--models", "llama3*,qwen*"])
    assert made.exit_code == 0, made.output
    key = made.stdout.strip()
    assert key.startswith("sollol-") and "only time" in made.stderr
    admin = runner.invoke(cli, ["keys", "create", "ops", "--admin"]).stdout.strip()
    stored = isolated_config.read_text()
    assert key not in stored and admin not in stored and hash_key(key) in stored
    assert oct(isolated_config.stat().st_mode & 0o777) == "0o600"  # holds hashes: owner only
    ring = KeyRing.from_config(load_config()["api_keys"])
    alice, ops = ring.find(key.encode()), ring.find(admin.encode())
    assert alice and alice.models == ("llama3*", "qwen*") and not alice.admin
    assert ops and ops.admin and ops.name == "ops"
    listed = runner.invoke(cli, ["keys", "list"])
    assert "alice  inference  models llama3*,qwen*" in listed.output
    assert "ops  admin" in listed.output and key not in listed.output
    assert hash_key(key) not in listed.output
    again = runner.invoke(cli, ["keys", "create", "alice"])
    assert again.exit_code == 2 and "unique" in again.output
    assert runner.invoke(cli, ["keys", "revoke", "alice"]).exit_code == 0
    assert [e["name"] for e in read_file(isolated_config)["api_keys"]] == ["ops"]
    missing = runner.invoke(cli, ["keys", "revoke", "alice"])
    assert missing.exit_code == 1 and "keys there: ops" in missing.output
    monkeypatch.setenv("SOLLOL_API_KEYS", new_key())
    listed = runner.invoke(cli, ["keys", "list", "--json"])
    assert '"source": "SOLLOL_API_KEYS"' in listed.output
    assert "takes precedence" in runner.invoke(cli, ["keys", "create", "x"]).stderr


def test_keys_list_flags_plain_text_keys(isolated_config):
    isolated_config.parent.mkdir(parents=True)
    isolated_config.write_text(f'api_keys = ["{new_key()}"]\n')
    listed = CliRunner().invoke(cli, ["keys", "list"])
    assert "key-1  admin" in listed.output and "stored in plain text" in listed.output
    empty = CliRunner().invoke(cli, ["keys", "list"], env={"SOLLOL_API_KEYS": ""})
    assert empty.exit_code == 0


# ---- binding beyond loopback


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "gateway.example"])
def test_run_refuses_a_wide_bind_without_a_key_before_binding(sollol_process, host):
    port = free_port()
    proc = sollol_process("run", "--host", host, "--port", str(port))
    assert proc.popen.wait(timeout=60) == 2
    log = proc.log_text().strip()
    assert log.count("\n") == 0, log  # one line
    assert log.startswith("Error: refusing to start") and "sollol keys create" in log
    assert "--insecure" in log and "sollol gateway on" not in log


def test_loopback_binds_and_keys_need_no_flag():
    assert access.open_bind("127.0.0.1", []) is None and access.open_bind("127.9.9.9", []) is None
    assert access.open_bind("::1", []) is None and access.open_bind("localhost", []) is None
    assert access.open_bind("0.0.0.0", [{"name": "k"}]) is None
    assert access.open_bind("0.0.0.0", []) and access.open_bind("192.168.1.4", [])


def test_library_gateway_refuses_a_wide_bind_without_a_key():
    from sollol.core.runtime import ClusterRuntime
    from sollol.gateway import GatewayThread
    from sollol.gateway.server import GatewayError

    with pytest.raises(GatewayError, match="sollol keys create"):
        GatewayThread(ClusterRuntime.from_config(overrides={"plugins": []}), host="0.0.0.0")


def test_insecure_serves_a_wide_bind_with_a_warning(processes, tmp_path):
    """Inside a network namespace of its own (only its loopback exists), so that binding
    0.0.0.0 reaches nothing else."""
    import shutil

    import httpx

    unshare = shutil.which("unshare")
    assert unshare, "unshare (util-linux) is needed for this test"
    port = free_port()
    config = tmp_path / "c.toml"
    config.write_text("plugins = []\n")  # the gateway alone
    command = (f"ip link set lo up && exec {sys.executable} -m sollol run --host 0.0.0.0 "
               f"--port {port} --insecure --config {config}")
    proc = processes.start("insecure", [unshare, "-n", "sh", "-c", command],
                           env=dict(os.environ))
    deadline = time.monotonic() + 120
    while "sollol gateway on" not in proc.log_text() and proc.alive():
        assert time.monotonic() < deadline, proc.log_text()
        time.sleep(0.05)
    log = proc.log_text()
    assert "warning: --insecure: serving on 0.0.0.0 without an access key" in log
    assert "sollol gateway on http://0.0.0.0" in log
    with pytest.raises(httpx.ConnectError):  # it listens in its own namespace, not ours
        httpx.get(f"http://127.0.0.1:{port}/", timeout=2)


def test_doctor_reports_an_open_wide_bind(isolated_config):
    from sollol.cli.checks import run_checks

    isolated_config.parent.mkdir(parents=True)
    isolated_config.write_text(f'plugins = []\ngateway_host = "0.0.0.0"\n'
                               f'gateway_port = {free_port()}\n')
    found = {f.check + " " + f.subject: f for f in run_checks()}
    finding = found["gateway gateway access on 0.0.0.0"]
    assert finding.status == "fail" and "open wide bind" in finding.detail
    assert "sollol keys create" in finding.fix
    with isolated_config.open("a") as handle:
        handle.write(f'api_keys = ["{new_key()}"]\n')
    finding = {f.check + " " + f.subject: f for f in run_checks()}[
        "gateway gateway access on 0.0.0.0"]
    assert finding.status == "ok" and "1 access key" in finding.detail
