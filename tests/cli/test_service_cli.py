"""`sollol install-service`: a hardened systemd unit for the gateway itself."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import tomli_w
from click.testing import CliRunner

from sollol.cli import build_cli

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
    result = sollol("install-service", "--dry-run", "--run-as", "sollol",
                    "--access-log", "json")
    assert result.exit_code == 0, result.output
    unit = sections(result.output)
    service = dict(unit["Service"])
    argv = shlex.split(service["ExecStart"])
    assert argv[:4] == [sys.executable, "-m", "sollol", "run"]
    assert argv[argv.index("--config") + 1] == str(isolated_config.resolve())
    assert argv[-2:] == ["--access-log", "json"]
    assert service["User"] == "sollol" and service["ExecReload"] == "/bin/kill -HUP $MAINPID"
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
