"""`sollol join`'s pieces without a gateway: its systemd unit (checked by systemd itself, the
token never in it), pool-node arguments, device readings, the worker's state checks."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from sollol_plugins.cluster_join.ca import ClusterCA
from sollol_plugins.cluster_join.errors import JoinRefused
from sollol_plugins.cluster_join.machine import PoolNode, cpu_device, parse_pool_node
from sollol_plugins.cluster_join.tokens import JoinToken
from sollol_plugins.cluster_join.worker_state import WorkerState

from sollol.cli import build_cli

TOKEN = "sollol-join-0123abcd." + "s" * 43 + "." + "a" * 32


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze (Debian package systemd) is needed; scripts/test installs it"
    return subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("user_unit", [False, True])
def test_install_service_writes_a_unit_systemd_accepts_and_keeps_the_token_out_of_it(
    tmp_path: Path, llama_binaries: object, user_unit: bool, isolated_config: Path,
) -> None:
    isolated_config.parent.mkdir(parents=True, exist_ok=True)
    isolated_config.write_text(f'llama_cpp_dir = "{llama_binaries.rpc_server.parent}"\n')
    unit = tmp_path / "sollol-join.service"
    args = ["join", "http://10.0.0.2:11435", "--token", TOKEN, "--name", "gpu-1",
            "--listen", "0.0.0.0:50053", "--install-service", "--output", str(unit)]
    # a system unit runs as an account that can read the binaries (checked before writing)
    result = CliRunner().invoke(build_cli(), args + (["--user"] if user_unit else
                                                     ["--run-as", "root"]))
    assert result.exit_code == 0, result.output
    text = unit.read_text()
    assert TOKEN not in text and "s" * 43 not in text
    secret = tmp_path / "sollol-join.env"
    assert secret.read_text() == f"SOLLOL_JOIN_TOKEN={TOKEN}\n"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert f"EnvironmentFile={secret}" in text
    assert " -m sollol join http://10.0.0.2:11435 --name gpu-1 --listen 0.0.0.0:50053 " \
           "--state-dir %S/sollol-join" in text
    assert ("User=root" in text) != user_unit
    checked = verify(unit)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_unit_keeps_a_worker_off_the_lan_when_asked(
    tmp_path: Path, isolated_config: Path, llama_binaries: object,
) -> None:
    isolated_config.parent.mkdir(parents=True, exist_ok=True)
    isolated_config.write_text(f'llama_cpp_dir = "{llama_binaries.rpc_server.parent}"\n')
    quiet, loud = tmp_path / "quiet.service", tmp_path / "loud.service"
    base = ["join", "http://10.0.0.2:11435", "--token", TOKEN, "--install-service", "--user"]
    for unit, extra in ((quiet, ["--no-announce"]), (loud, [])):
        result = CliRunner().invoke(build_cli(), [*base, *extra, "--output", str(unit)])
        assert result.exit_code == 0, result.output
    assert " --no-announce" in quiet.read_text()
    assert "announce" not in loud.read_text()


def test_join_refuses_a_malformed_token_and_a_remote_pool_node() -> None:
    runner = CliRunner()
    bad = runner.invoke(build_cli(), ["join", "http://127.0.0.1:1", "--token", "nope"])
    assert bad.exit_code == 2 and "malformed join token" in bad.output
    none = runner.invoke(build_cli(), ["join", "http://127.0.0.1:1"], env={
        "SOLLOL_JOIN_TOKEN": ""})
    assert none.exit_code == 2 and "sollol cluster token create" in none.output
    remote = runner.invoke(build_cli(), ["join", "http://127.0.0.1:1", "--token", TOKEN,
                                         "--pool-node", "http://10.0.0.9:11434", "--no-rpc"])
    assert remote.exit_code == 2 and "must run on this machine" in remote.output


def test_pool_node_arguments() -> None:
    assert parse_pool_node("openai://127.0.0.1:8080") == PoolNode("openai", 8080)
    assert parse_pool_node("ollama://localhost:11500") == PoolNode("ollama", 11500)
    with pytest.raises(ValueError, match="scheme"):
        parse_pool_node("ftp://127.0.0.1:21")


def test_cpu_memory_comes_from_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:  100 kB\n"
                       "MemAvailable:   12000000 kB\n")
    assert cpu_device(meminfo) == {"name": "CPU", "backend": "cpu",
                                   "memory_total": 16000000 * 1024,
                                   "memory_free": 12000000 * 1024}
    live = cpu_device()
    assert live is not None and 0 < live["memory_free"] <= live["memory_total"]


def test_the_worker_keeps_only_a_certificate_for_its_own_key_from_the_tokens_ca(
    tmp_path: Path,
) -> None:
    ca = ClusterCA.load_or_create(tmp_path / "ca")
    token = JoinToken.parse(f"sollol-join-0123abcd.{'s' * 43}.{ca.pin}")
    state = WorkerState(tmp_path / "worker")
    other = WorkerState(tmp_path / "other")
    answer = {"name": "w1", "ca_certificate": ca.ca_pem, "heartbeat_interval": 2.0,
              "gateway_fingerprint": ca.gateway_fingerprint}
    with pytest.raises(JoinRefused, match="not for this machine's key"):
        state.save("http://gw", {**answer, "certificate": ca.issue("w1", other.public_key())})
    foreign = ClusterCA.load_or_create(tmp_path / "foreign")
    with pytest.raises(JoinRefused, match="not signed by the cluster CA"):
        state.save("http://gw", {**answer,
                                 "certificate": foreign.issue("w1", state.public_key())})
    saved = state.save("http://gw", {**answer, "certificate": ca.issue("w1", state.public_key())})
    assert state.load(token) == saved and saved.heartbeat_interval == 2.0
    for name in ("member.key", "member.pem", "ca.pem", "membership.json"):
        assert stat.S_IMODE((tmp_path / "worker" / name).stat().st_mode) == 0o600
    assert state.load(JoinToken.parse(f"sollol-join-0123abcd.{'s' * 43}.{'b' * 32}")) is None
