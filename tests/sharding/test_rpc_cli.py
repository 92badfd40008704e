"""`sollol rpc serve|install-service` and `sollol shard status|logs`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner
from sollol_plugins.llamacpp_rpc.rpc_commands import _warn_if_open
from sollol_plugins.llamacpp_rpc.rpc_probe import ProbeError, RpcProbe, probe

from sollol.cli import build_cli
from sollol.core.processes import ManagedProcess, ProcessGroup, free_port
from sollol.models import RouteRequest
from sollol.routes import Outcome

ONLY_US = ["llamacpp_rpc"]
"""Config files here load only this plugin: the tests exercise its commands alone."""


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in its own process, as a user would run it (env: the isolated config)."""
    return subprocess.run([sys.executable, "-m", "sollol", *args], capture_output=True,
                          text=True, timeout=120)


def test_install_service_dry_run_prints_a_hardened_unit(llama_binaries,
                                                        isolated_config: Path) -> None:
    isolated_config.parent.mkdir(parents=True, exist_ok=True)
    isolated_config.write_text(tomli_w.dumps(
        {"llama_cpp_dir": str(llama_binaries.rpc_server.parent), "plugins": ONLY_US}))
    result = CliRunner().invoke(build_cli(), ["rpc", "install-service", "--dry-run", "--port",
                                              "50111", "--threads", "2", "--run-as", "root"])
    assert result.exit_code == 0, result.output
    assert (f"ExecStart={sys.executable} -m sollol rpc serve --host 127.0.0.1 --port 50111 "
            "--threads 2") in result.output
    assert f"SOLLOL_LLAMA_CPP_DIR={llama_binaries.rpc_server.parent}" in result.output
    assert "NoNewPrivileges=yes" in result.output and "[Install]" in result.output


def test_install_service_writes_a_user_unit(llama_binaries, isolated_config: Path,
                                            tmp_path: Path) -> None:
    isolated_config.parent.mkdir(parents=True, exist_ok=True)
    isolated_config.write_text(tomli_w.dumps(
        {"llama_cpp_dir": str(llama_binaries.rpc_server.parent), "plugins": ONLY_US}))
    target = tmp_path / "units" / "sollol-rpc.service"
    result = CliRunner().invoke(build_cli(), ["rpc", "install-service", "--user", "--output",
                                              str(target)])
    assert result.exit_code == 0, result.output
    assert "WantedBy=default.target" in target.read_text()
    assert "systemctl --user daemon-reload" in result.output


def test_wide_bind_warns(capsys: pytest.CaptureFixture[str]) -> None:
    _warn_if_open("127.0.0.1")
    assert capsys.readouterr().err == ""
    _warn_if_open("10.1.2.3")
    assert "no authentication" in capsys.readouterr().err


def serve_rpc(processes: ProcessGroup, config: Path, *options: str, name: str = "sollol-rpc-serve",
              env: dict[str, str] | None = None,
              timeout: float = 60) -> tuple[ManagedProcess, int, RpcProbe]:
    """`sollol rpc serve --port P --threads 1 OPTIONS` as a user runs it (config file `config`),
    once its rpc-server answers a probe: the process, its port and that probe."""
    port = free_port()
    proc = processes.start(name, [
        sys.executable, "-m", "sollol", "rpc", "serve", "--port", str(port), "--threads", "1",
        *options], env={**os.environ, **(env or {}), "SOLLOL_CONFIG": str(config)})
    deadline = time.monotonic() + timeout
    while True:
        assert proc.alive(), proc.log_text()
        try:
            return proc, port, probe("127.0.0.1", port, 2)
        except ProbeError:
            assert time.monotonic() < deadline, proc.log_text()
            time.sleep(0.1)


def test_rpc_serve_runs_an_rpc_server_with_a_cache(processes, llama_binaries,
                                                   tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env_config = tmp_path / "serve.toml"
    env_config.write_text(tomli_w.dumps(
        {"llama_cpp_dir": str(llama_binaries.rpc_server.parent), "plugins": ONLY_US}))
    proc, _port, answer = serve_rpc(processes, env_config, "--cache", str(cache))
    assert answer.version[0] >= 7
    assert f"{cache}/rpc" in proc.log_text()  # rpc-server keeps its cache in $LLAMA_CACHE/rpc


async def test_shard_status_and_logs_without_a_gateway(
    rpc_servers, sharding_route, tiny_model: Path, isolated_config: Path, tmp_path: Path,
) -> None:
    servers = rpc_servers(2)
    addresses = [a for a, _ in servers]
    route = await sharding_route(addresses, rpc_placement="all")
    lease = await route.acquire(RouteRequest(model=str(tiny_model)))
    lease.release(Outcome(ok=True))
    isolated_config.parent.mkdir(parents=True, exist_ok=True)
    isolated_config.write_text(tomli_w.dumps({
        "rpc_backends": addresses, "rpc_state_dir": str(route.supervisor.options.state_dir),
        # no gateway on that port: the command falls back to its local view
        "gateway_port": free_port(), "plugins": ONLY_US}))

    result = run_cli("shard", "status", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["source"].startswith("local")
    (coord,) = data["coordinators"]
    assert coord["state"] == "ready" and coord["backends"] == addresses
    assert [b["layers"] > 0 for b in coord["layers"]["backends"]] == [True, True]
    # the held rpc-servers were not probed by the second process: they still serve
    assert {b["address"]: b["attached_to"] is not None for b in data["backends"]} == \
        dict.fromkeys(addresses, True)
    assert all(proc.alive() for _, proc in servers)

    text = run_cli("shard", "status", "--local")
    assert "layers" in text.stdout and addresses[0] in text.stdout

    logs = run_cli("shard", "logs", str(tiny_model), "-n", "400")
    assert logs.returncode == 0 and "model buffer size" in logs.stdout
    missing = run_cli("shard", "logs", "no-such-model")
    assert missing.returncode != 0 and "no coordinator log" in missing.stderr


def test_install_service_refuses_a_unit_whose_account_cannot_run_the_binary(
    isolated_config: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The printed unit is what a user pastes: it must not fail with 203/EXEC, so it is
    refused (also with --dry-run), naming the path and the fix."""
    monkeypatch.setattr("sollol_plugins.llamacpp_rpc.rpc_commands._rpc_binary",
                        lambda config: Path("/home/someone/bin/ggml-rpc-server"))
    monkeypatch.delenv("SUDO_USER", raising=False)
    isolated_config.parent.mkdir(parents=True, exist_ok=True)
    isolated_config.write_text(tomli_w.dumps({"plugins": ONLY_US}))
    result = CliRunner().invoke(build_cli(), ["rpc", "install-service", "--dry-run"])
    assert result.exit_code == 1, result.output
    assert "[Service]" not in result.stdout
    assert "ggml-rpc-server /home/someone/bin/ggml-rpc-server does not exist" in result.output
    assert "--run-as USER" in result.output
    with_account = CliRunner().invoke(build_cli(), ["rpc", "install-service", "--dry-run",
                                                    "--run-as", "someone-h8-absent"])
    assert with_account.exit_code == 1 and "no such account" in with_account.output


def test_local_status_never_shows_an_earlier_coordinators_layers(tmp_path: Path) -> None:
    """The saved report of a model's earlier coordinator (on other rpc-servers) must not stand
    for the one now loading: the layers would name rpc-servers it does not use (issue 28)."""
    import subprocess
    import sys

    from sollol_plugins.llamacpp_rpc import procs
    from sollol_plugins.llamacpp_rpc.options import slug
    from sollol_plugins.llamacpp_rpc.shard_status import local_status

    from sollol.core.runtime import load

    state = tmp_path / "sharding"
    now, before = "127.0.0.1:1", "127.0.0.1:2"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        procs.write_pid_file(state / "coordinators", child,
                             {"model": "big", "backends": [now], "port": 9})
        (state / "reports").mkdir(parents=True)
        (state / "reports" / f"{slug('big')}.json").write_text(json.dumps({
            "pid": child.pid + 1, "backends": [before],
            "placement": {"reason": f"fits on 1 of 2 free rpc-server(s): {before}"},
            "layers": {"backends": [{"address": before, "layers": 8}]}}))
        config, _pm = load(overrides={"rpc_backends": [], "rpc_state_dir": str(state),
                                      "rpc_discover_loopback": False, "plugins": ONLY_US})
        (coord,) = local_status(config)["coordinators"]
    finally:
        child.kill()
        child.wait()
    assert coord["state"] == "starting" and coord["backends"] == [now]
    assert "layers" not in coord and "placement" not in coord
