"""`sollol rpc install-service`: who may connect (`--allow`), the sandbox (system-call filter,
hidden /proc, closed device policy with GPUs let through), and an `ExecStart` systemd reads as
written, also for paths holding `%`, `$` and spaces; every unit is checked by systemd itself
(`systemd-analyze verify`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner
from sollol_plugins.llamacpp_rpc.rpc_unit import ServiceSpec, exec_line, parse_allow, render

from sollol.cli import build_cli

ONLY_US = ["llamacpp_rpc"]


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze (Debian package systemd) is needed; scripts/test installs it"
    return subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def odd_binary(tmp_path, llama_binaries) -> Path:
    """The real binaries and Python under a path with systemd's specifier and variable
    characters; returns the folder."""
    folder = tmp_path / "50%n $HOME ${X} a b"  # %n: the unit's name, if systemd expanded it
    folder.mkdir()
    (folder / "ggml-rpc-server").symlink_to(llama_binaries.rpc_server.resolve())
    (folder / "llama-server").symlink_to(llama_binaries.llama_server.resolve())
    (folder / "python").symlink_to(Path(sys.executable))
    return folder


def odd_spec(folder: Path, **fields) -> ServiceSpec:
    return ServiceSpec(folder / "python", folder, **fields)


def units(tmp_path: Path, spec: ServiceSpec) -> Path:
    unit = tmp_path / f"sollol-rpc-{len(list(tmp_path.glob('*.service')))}.service"
    unit.write_text(render(spec))
    return unit


@pytest.mark.parametrize("user_unit", [False, True])
def test_units_pass_systemds_own_check_with_odd_paths(tmp_path, odd_binary, user_unit):
    spec = odd_spec(odd_binary, host="10.0.0.7", port=50052, threads=2, cache=True,
                    user_unit=user_unit, allow=parse_allow("10.0.0.2/32,fd00::/8"))
    unit = units(tmp_path, spec)
    result = verify(unit)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Unknown key" not in result.stderr and "specifier" not in result.stderr
    text = unit.read_text()
    # `%` doubled in the path, `$` kept there (systemd expands no variables in it)
    odd = str(odd_binary).replace("%", "%%")
    assert (f'ExecStart="{odd}/python" -m sollol rpc serve --host 10.0.0.7 --port 50052 '
            "--threads 2 --cache %C/sollol-rpc") in text
    assert f'Environment="SOLLOL_LLAMA_CPP_DIR={odd}"' in text


def test_a_missed_escape_is_what_systemd_refuses(tmp_path, odd_binary):
    """The check above means something: the unescaped `%` makes systemd reject the unit."""
    unit = units(tmp_path, odd_spec(odd_binary))
    unit.write_text(unit.read_text().replace("50%%n", "50%n"))
    assert verify(unit).returncode != 0


def test_paths_systemd_cannot_run_are_refused_as_systemd_would(tmp_path, llama_binaries):
    folder = tmp_path / "it's"
    folder.mkdir()
    (folder / "rpc").symlink_to(llama_binaries.rpc_server.resolve())
    with pytest.raises(ValueError, match="cannot run"):
        render(ServiceSpec(folder / "python", folder))
    unit = tmp_path / "quote.service"
    unit.write_text(f'[Unit]\nDescription=x\n[Service]\nExecStart="{folder}/rpc"\n')
    result = verify(unit)
    assert result.returncode != 0 and "special characters" in result.stderr


def test_exec_line_escapes_arguments():
    assert exec_line(["/usr/bin/x", "-H", "10.0.0.1", "-p", "1"]) == "/usr/bin/x -H 10.0.0.1 -p 1"
    assert exec_line(["/opt/a b/x", "50%", "$HOME", 'say "hi"', "back\\slash"]) == \
        '"/opt/a b/x" "50%%" "$$HOME" "say \\"hi\\"" "back\\\\slash"'
    for bad in ('/opt/it"s/x', "/opt/back\\slash/x", "/opt/new\nline/x"):
        with pytest.raises(ValueError, match="cannot run"):
            exec_line([bad])


def test_allow_writes_ip_filters_and_the_sandbox(tmp_path):
    text = render(ServiceSpec(tmp_path / "python", tmp_path, host="0.0.0.0",
                              allow=parse_allow("10.0.0.2, 10.0.1.0/24,10.0.0.2/32")))
    lines = text.splitlines()
    assert "IPAddressAllow=localhost 10.0.0.2/32 10.0.1.0/24" in lines
    assert "IPAddressDeny=any" in lines
    for line in ("ProtectProc=invisible", "ProcSubset=pid", "SystemCallFilter=@system-service",
                 "SystemCallFilter=~@privileged", "DevicePolicy=closed",
                 "DeviceAllow=char-drm rw", "DeviceAllow=char-nvidia-uvm rw",
                 "DeviceAllow=char-kfd rw"):
        assert line in lines, line
    loopback = render(ServiceSpec(tmp_path / "python", tmp_path)).splitlines()
    assert "IPAddressAllow=localhost" in loopback and "IPAddressDeny=any" in loopback
    wide = render(ServiceSpec(tmp_path / "python", tmp_path, host="0.0.0.0"))
    assert "IPAddressDeny" not in wide  # no --allow for a wide bind: the CLI warns instead
    with pytest.raises(ValueError, match="not an address"):
        parse_allow("10.0.0.0/33")
    with pytest.raises(ValueError, match="at least one"):
        parse_allow(" , ")


def test_cli_allow_option(llama_binaries, isolated_config):
    isolated_config.parent.mkdir(parents=True, exist_ok=True)
    isolated_config.write_text(tomli_w.dumps(
        {"llama_cpp_dir": str(llama_binaries.rpc_server.parent), "plugins": ONLY_US}))
    cli = build_cli()
    allowed = CliRunner().invoke(cli, ["rpc", "install-service", "--dry-run", "--host",
                                       "0.0.0.0", "--allow", "10.0.0.2/32", "--run-as", "root"])
    assert allowed.exit_code == 0, allowed.output
    assert "IPAddressAllow=localhost 10.0.0.2/32" in allowed.stdout
    assert "no --allow" not in allowed.stderr
    open_bind = CliRunner().invoke(cli, ["rpc", "install-service", "--dry-run", "--host",
                                         "0.0.0.0", "--run-as", "root"])
    assert open_bind.exit_code == 0 and "no --allow" in open_bind.stderr
    bad = CliRunner().invoke(cli, ["rpc", "install-service", "--dry-run", "--allow", "nope"])
    assert bad.exit_code == 2 and "'nope' is not an address" in bad.output


@pytest.mark.parametrize("user_unit", [False, True])
def test_the_gateway_unit_passes_systemds_check_with_odd_paths(tmp_path, user_unit):
    """The same escaping for `sollol install-service` (the gateway's unit): its config file,
    environment and writable folder may sit under paths holding `%`, `$` and spaces."""
    import sys

    from sollol.cli.gateway_unit import GatewaySpec
    from sollol.cli.gateway_unit import render as render_gateway

    folder = tmp_path / "50%n $HOME a b"
    folder.mkdir()
    config = folder / "config.toml"
    config.write_text("")
    spec = GatewaySpec(Path(sys.executable), config, {"OLLAMA_MODELS": str(folder)},
                       user_unit=user_unit, read_write=(folder,))
    unit = tmp_path / "sollol.service"
    unit.write_text(render_gateway(spec))
    result = verify(unit)
    assert result.returncode == 0, result.stdout + result.stderr
    text = unit.read_text()
    assert f'--config "{str(config).replace("%", "%%").replace("$", "$$")}"' in text
    assert f'Environment="SOLLOL_CONFIG={str(config).replace("%", "%%")}"' in text
    assert 'Environment="XDG_STATE_HOME=%S"' in text  # the one specifier meant as one


def test_the_unit_runs_sollol_rpc_serve_with_its_client_timeout(
    llama_binaries, isolated_config, tmp_path, processes, monkeypatch,
):
    """Issue 28, finding 3: the unit runs `sollol rpc serve` (which frees the server from a
    silent client), not a bare ggml-rpc-server; its command line serves as written, and a unit
    whose DynamicUser cannot read the programs is refused with the fix."""
    from sollol.core.processes import free_port, wait_port
    from sollol.testing.unit_files import unit_command

    isolated_config.parent.mkdir(parents=True, exist_ok=True)
    isolated_config.write_text(tomli_w.dumps(
        {"llama_cpp_dir": str(llama_binaries.rpc_server.parent), "plugins": ONLY_US}))
    port = free_port()
    target = tmp_path / "sollol-rpc.service"
    result = CliRunner().invoke(build_cli(), [
        "rpc", "install-service", "--port", str(port), "--threads", "1", "--cache",
        "--client-timeout", "7", "--run-as", "root", "--output", str(target)])
    assert result.exit_code == 0, result.output
    checked = verify(target)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    argv, env = unit_command(target.read_text(), state=tmp_path / "state",
                             cache=tmp_path / "cache")
    assert argv[1:5] == ["-m", "sollol", "rpc", "serve"]
    assert argv[argv.index("--client-timeout") + 1] == "7"
    assert argv[argv.index("--cache") + 1] == str(tmp_path / "cache" / "sollol-rpc")
    proc = processes.start("unit", argv, env={**os.environ, **env})
    wait_port("127.0.0.1", port, process=proc, timeout=60)
    assert f"-H 127.0.0.1 -p {port}" in proc.log_text()

    # binaries where only their owner may look (pytest's tmp folders are 0700)
    private = tmp_path / "bin"
    private.mkdir()
    for binary in (llama_binaries.rpc_server, llama_binaries.llama_server):
        (private / binary.name).symlink_to(binary.resolve())
    isolated_config.write_text(tomli_w.dumps({"llama_cpp_dir": str(private), "plugins": ONLY_US}))
    monkeypatch.delenv("SUDO_USER", raising=False)
    refused = CliRunner().invoke(build_cli(), ["rpc", "install-service", "--dry-run"])
    assert refused.exit_code == 1, refused.output
    assert "DynamicUser cannot enter" in refused.output
    assert f"ggml-rpc-server {private / 'ggml-rpc-server'}" in refused.output
    assert "--run-as USER" in refused.output and "--prefix /usr/local" in refused.output
