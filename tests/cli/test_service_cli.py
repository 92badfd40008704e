"""`sollol install-service`: a hardened systemd unit for the gateway itself."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner

from sollol.cli import build_cli
from sollol.cli.unit_access import Account, Need, unreadable
from sollol.core.access import hash_key, new_key
from sollol.core.processes import free_port, wait_http
from sollol.testing.unit_files import unit_command

HARDENING = ("NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes",
             "RestrictNamespaces=yes", "RestrictSUIDSGID=yes", "LockPersonality=yes",
             "SystemCallArchitectures=native", "UMask=0077", "ProtectKernelTunables=yes",
             "ProtectControlGroups=yes")


def sollol(*args: str):
    return CliRunner().invoke(build_cli(), list(args))


def sections(text: str) -> dict[str, list[tuple[str, str]]]:
    """The unit as systemd reads it: [Section] headers, Key=Value lines, # comments."""
    out: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = out.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep and key and current is not None, f"not a unit line: {line!r}"
        current.append((key, value))
    return out


def test_needs_a_config_file(isolated_config: Path) -> None:
    result = sollol("install-service", "--dry-run")
    assert result.exit_code == 1 and "no config file at" in result.output


def test_dry_run_prints_a_hardened_unit_for_this_config(isolated_config: Path,
                                                        llama_binaries) -> None:
    isolated_config.parent.mkdir(parents=True, exist_ok=True)
    isolated_config.write_text(tomli_w.dumps({
        "gateway_port": 11500, "llama_cpp_dir": str(llama_binaries.llama_server.parent)}))
    result = sollol("install-service", "--dry-run", "--run-as", "root",
                    "--access-log", "json")
    assert result.exit_code == 0, result.output
    unit = sections(result.stdout)
    service = dict(unit["Service"])
    argv = shlex.split(service["ExecStart"])
    assert argv[:4] == [sys.executable, "-m", "sollol", "run"]
    assert argv[argv.index("--config") + 1] == str(isolated_config.resolve())
    assert argv[-2:] == ["--access-log", "json"]
    assert service["User"] == "root" and service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    environment = [value for key, value in unit["Service"] if key == "Environment"]
    assert f"SOLLOL_LLAMA_CPP_DIR={llama_binaries.llama_server.parent}" in environment
    for line in (*HARDENING, "ProtectHome=read-only", "CapabilityBoundingSet="):
        key, value = line.split("=", 1)
        assert (key, value) in unit["Service"], line
    assert dict(unit["Install"])["WantedBy"] == "multi-user.target"


def test_user_unit_is_written(isolated_config: Path, tmp_path: Path) -> None:
    isolated_config.parent.mkdir(parents=True, exist_ok=True)
    isolated_config.write_text(tomli_w.dumps({"gateway_port": 11500}))
    target = tmp_path / "units" / "sollol.service"
    result = sollol("install-service", "--user", "--output", str(target))
    assert result.exit_code == 0, result.output
    unit = sections(target.read_text())
    assert dict(unit["Install"])["WantedBy"] == "default.target"
    assert "DynamicUser" not in dict(unit["Service"]) and "User" not in dict(unit["Service"])
    assert "systemctl --user daemon-reload" in result.output


def test_an_open_bind_without_keys_is_refused(isolated_config: Path) -> None:
    isolated_config.parent.mkdir(parents=True, exist_ok=True)
    isolated_config.write_text(tomli_w.dumps({"gateway_host": "0.0.0.0"}))
    result = sollol("install-service", "--dry-run")
    assert result.exit_code == 1 and "would refuse to start" in result.output


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze (Debian package systemd) is needed; scripts/test installs it"
    return subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True,
                          text=True, timeout=120)


def _keyed_config(path: Path, key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps({
        "plugins": [], "gateway_port": free_port(),
        "api_keys": [{"name": "me", "hash": hash_key(key), "admin": True}]}))


def test_a_unit_for_host_0000_runs_what_the_user_ran(isolated_config: Path, tmp_path: Path,
                                                     processes) -> None:
    """Issue 28, finding 3: `--host 0.0.0.0` reaches the unit's `sollol run` (the config says
    127.0.0.1); systemd's own check passes, and the unit's command serves on that address."""
    key = new_key()
    _keyed_config(isolated_config, key)
    port = free_port()
    target = tmp_path / "units" / "sollol.service"
    result = sollol("install-service", "--host", "0.0.0.0", "--port", str(port),
                    "--run-as", "root", "--output", str(target))
    assert result.exit_code == 0, result.output
    assert "will listen on" not in result.output
    text = target.read_text()
    checked = _verify(target)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    argv, env = unit_command(text, state=tmp_path / "state", cache=tmp_path / "cache")
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    proc = processes.start("unit", argv, env={**os.environ, **env})
    wait_http(f"http://127.0.0.1:{port}/api/version", process=proc, timeout=60,
              headers={"Authorization": f"Bearer {key}"})
    assert f"sollol gateway on http://0.0.0.0:{port}" in proc.log_text()


def test_a_loopback_unit_says_the_network_cannot_reach_it(isolated_config: Path) -> None:
    _keyed_config(isolated_config, new_key())
    result = sollol("install-service", "--dry-run", "--run-as", "root")
    assert result.exit_code == 0, result.output
    assert "will listen on 127.0.0.1 only" in result.output and "--host 0.0.0.0" in result.output


def test_host_0000_without_keys_is_refused_with_the_fix(isolated_config: Path) -> None:
    isolated_config.parent.mkdir(parents=True, exist_ok=True)
    isolated_config.write_text(tomli_w.dumps({"plugins": []}))
    result = sollol("install-service", "--dry-run", "--host", "0.0.0.0", "--run-as", "root")
    assert result.exit_code == 1
    assert "would refuse to start" in result.output and "sollol keys create" in result.output


def test_a_unit_its_account_cannot_read_is_refused_with_the_fix(isolated_config: Path,
                                                                monkeypatch) -> None:
    """Root without SUDO_USER gets a DynamicUser, which reads only what everyone may: a 0600
    config (it holds the key hashes) cannot be its config."""
    monkeypatch.delenv("SUDO_USER", raising=False)
    _keyed_config(isolated_config, new_key())
    isolated_config.chmod(0o600)
    result = sollol("install-service", "--dry-run")
    assert result.exit_code == 1
    assert "the unit could not start" in result.output
    assert "DynamicUser" in result.output and str(isolated_config.name) in result.output
    assert "--run-as USER" in result.output
    missing = sollol("install-service", "--dry-run", "--run-as", "no-such-account-h8")
    assert missing.exit_code == 1 and "no such account" in missing.output


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder everyone may enter (pytest's own tmp folders are 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="sollol-unit-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def test_unreadable_paths_name_the_folder_that_stops_the_account(open_folder: Path) -> None:
    closed = open_folder / "closed"
    closed.mkdir(mode=0o700)
    inner = closed / "config.toml"
    inner.write_text("")
    open_file = open_folder / "open.toml"
    open_file.write_text("")
    open_file.chmod(0o644)
    nobody = Account(None)
    problems = unreadable([Need(inner, "the config file"), Need(open_file, "the config file")],
                          nobody)
    assert problems == [f"the unit's DynamicUser cannot enter {closed}, so it cannot read the "
                        f"config file {inner}"]
    assert unreadable([Need(inner, "the config file")], Account.named("root")) == []


def test_a_link_in_a_closed_folder_is_unreadable_whatever_it_points_at(open_folder: Path) -> None:
    """Following a symlink needs search permission on the folders on the way to the link, not
    only on the way to its target (a readable binary linked from a private bin/)."""
    target = open_folder / "ggml-rpc-server"
    target.write_text("")
    target.chmod(0o755)
    closed = open_folder / "bin"
    closed.mkdir(mode=0o700)
    link = closed / "ggml-rpc-server"
    link.symlink_to(target)
    problems = unreadable([Need(link, "ggml-rpc-server", execute=True)], Account(None))
    assert problems == [f"the unit's DynamicUser cannot enter {closed}, so it cannot read "
                        f"ggml-rpc-server {link} (-> {target})"]
    opened = open_folder / "public"
    opened.mkdir(mode=0o755)
    (opened / "ggml-rpc-server").symlink_to(target)
    assert unreadable([Need(opened / "ggml-rpc-server", "ggml-rpc-server", execute=True)],
                      Account(None)) == []
