"""`sollol doctor` against a healthy local set-up and broken ones, each with its fix."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sollol.cli import build_cli
from sollol.cli.checks import _compatible, _rpc_server
from sollol.config import write_file
from sollol.core.processes import free_port
from sollol.models import Backend, HealthReport

cli = build_cli()

pytestmark = pytest.mark.llamacpp


def doctor(config: Path, *args: str) -> tuple[int, str, list[dict[str, Any]]]:
    """Run `sollol doctor` twice (text and JSON) on a config file."""
    runner = CliRunner()
    text = runner.invoke(cli, ["doctor", "--config", str(config), "--timeout", "5", *args])
    data = runner.invoke(cli, ["doctor", "--config", str(config), "--timeout", "5", "--json"])
    assert data.exit_code == text.exit_code, data.output
    return text.exit_code, text.output, json.loads(data.output)


def write(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / "doctor.toml"
    write_file(path, values)
    return path


def by_subject(findings: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f["subject"]: f for f in findings}


def test_healthy_local_cluster(tmp_path: Path, local_cluster: Any) -> None:
    config = write(tmp_path, {**local_cluster.overrides(), "gateway_port": free_port()})
    code, output, findings = doctor(config)
    assert code == 0, output
    assert all(f["status"] == "ok" for f in findings), output
    subjects = by_subject(findings)
    node, rpc = local_cluster.pool[0].address, local_cluster.rpc[0].address
    assert "llama-server" in subjects[f"pool node {node}"]["detail"]
    assert "sollol-demo-small" in subjects[f"pool node {node}"]["detail"]
    assert "matches local RPC" in subjects[f"rpc-server {rpc}"]["detail"]
    assert "sollol-demo-large" in subjects["Ollama model store"]["detail"]
    assert "everything looks right" in output


def test_missing_binaries(tmp_path: Path, local_cluster: Any) -> None:
    empty = tmp_path / "no-binaries"
    empty.mkdir()
    config = write(tmp_path, {**local_cluster.overrides(), "llama_cpp_dir": str(empty),
                              "gateway_port": free_port()})
    code, output, findings = doctor(config)
    assert code == 1
    binaries = by_subject(findings)["llama.cpp"]
    assert binaries["status"] == "fail" and str(empty) in binaries["detail"]
    assert "sollol llamacpp install" in binaries["fix"]
    assert "fix: run `sollol llamacpp install`" in output
    # the nodes are still checked; the RPC version cannot be compared without local binaries
    rpc = by_subject(findings)[f"rpc-server {local_cluster.rpc[0].address}"]
    assert rpc["status"] == "warn" and "not compared" in rpc["detail"]


def test_unreachable_node_and_rpc_server(tmp_path: Path, local_cluster: Any) -> None:
    node, rpc = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    config = write(tmp_path, {**local_cluster.overrides(), "ollama_nodes": [f"openai://{node}"],
                              "rpc_backends": [rpc], "gateway_port": free_port()})
    code, output, findings = doctor(config)
    assert code == 1
    subjects = by_subject(findings)
    assert subjects[f"pool node {node}"]["status"] == "fail"
    assert "unreachable" in subjects[f"pool node {node}"]["detail"]
    assert "remove it from ollama_nodes" in subjects[f"pool node {node}"]["fix"]
    assert subjects[f"rpc-server {rpc}"]["status"] == "fail"
    assert f"sollol rpc serve --host 0.0.0.0 --port {rpc.rsplit(':', 1)[1]}" in \
        subjects[f"rpc-server {rpc}"]["fix"]
    assert "2 problem(s)" in output


@pytest.mark.parametrize(("values", "words"), [
    ({"gateway_port": "not a port"}, "gateway_port"),
    ({"no_such_key": 1}, "no_such_key"),
    ({"routing_policy": "no-such-policy", "model_sharding_enabled": True}, "no-such-policy"),
])
def test_bad_config(tmp_path: Path, values: dict[str, Any], words: str) -> None:
    code, output, findings = doctor(write(tmp_path, values))
    assert code == 1
    config = by_subject(findings)["configuration"]
    assert config["status"] == "fail" and words in config["detail"]
    assert "sollol config show" in config["fix"]
    assert "FAIL  configuration" in output


def test_gateway_port_in_use(tmp_path: Path, local_cluster: Any) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _output, findings = doctor(write(tmp_path, {**local_cluster.overrides(),
                                                          "gateway_port": port}))
    assert code == 1
    finding = by_subject(findings)[f"gateway port 127.0.0.1:{port}"]
    assert finding["status"] == "fail" and "gateway_port" in finding["fix"]


def test_rpc_protocol_mismatch_is_a_problem() -> None:
    backend = Backend(id="rpc:10.0.0.7:50052", kind="rpc", address="10.0.0.7:50052")
    newer = HealthReport(backend.id, healthy=True, version="7.1.0", detail="RPC 7.1.0")
    finding = _rpc_server(backend, newer, "7.0.0")
    assert finding.status == "fail"
    assert "7.1.0" in finding.detail and "7.0.0" in finding.detail
    assert "one llama.cpp version" in finding.fix
    assert _rpc_server(backend, newer, "7.2.0").status == "ok"
    assert not _compatible("8.0.0", "7.9.0") and _compatible("7.0.3", "7.0.0")


def test_the_readme_config_example_is_valid(tmp_path: Path) -> None:
    """The "use it with your real cluster" config loads and builds its policy (no probing)."""
    import re

    from sollol.core.runtime import ClusterRuntime, load

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = re.search(r"```toml\n(.*?)```", readme, re.S)
    assert example, "README.md has no ```toml example"
    path = tmp_path / "real.toml"
    path.write_text(example.group(1))
    config, pm = load(path=path)
    assert config["model_sharding_enabled"] and config["task_distribution_enabled"]
    policy = ClusterRuntime(config=config, pm=pm)._make_policy()
    assert policy is not None and policy.name == "size-threshold"


def test_an_rpc_server_held_by_a_running_gateway_is_busy_by_design(
    tmp_path: Path, local_cluster: Any,
) -> None:
    """A sharded model loaded by a running gateway holds the rpc-server: doctor asks that
    gateway instead of probing (and failing on) it."""
    import httpx

    from sollol.core.runtime import ClusterRuntime
    from sollol.gateway import GatewayThread

    port = free_port()
    values = {**local_cluster.overrides(), "gateway_port": port}
    gateway = GatewayThread(ClusterRuntime.from_config(overrides=values), port=port).start()
    try:
        reply = httpx.post(gateway.url + "/api/generate", timeout=300, json={
            "model": "sollol-demo-large", "prompt": "hi", "stream": False,
            "options": {"num_predict": 2}})
        assert reply.status_code == 200 and reply.headers["x-sollol-route"] == "sharding"
        _code, output, findings = doctor(write(tmp_path, values))
    finally:
        gateway.stop()
    rpc = by_subject(findings)[f"rpc-server {local_cluster.rpc[0].address}"]
    assert rpc["status"] == "ok", output
    assert "busy by design" in rpc["detail"] and f"127.0.0.1:{port}" in rpc["detail"]


def test_a_missing_config_file_is_not_called_valid(tmp_path: Path) -> None:
    _code, _output, findings = doctor(tmp_path / "absent.toml")
    config = by_subject(findings)["configuration"]
    assert config["status"] == "warn"
    assert "no config file at" in config["detail"] and "is valid" not in config["detail"]
    assert "sollol config set" in config["fix"]


def test_a_healthy_running_cluster_with_keys_passes(
    tmp_path: Path, local_cluster: Any, processes: Any, isolated_config: Path,
) -> None:
    """Issue 28, finding 1: a real `sollol run` that requires keys, with a sharded model
    loaded. Doctor knows its port is the gateway's, and never fails the rpc-servers it holds:
    without a key it does not probe them (a warning saying why); with the saved admin key it
    asks the gateway which it holds."""
    import os
    import sys

    import httpx

    from sollol.cli.credentials import save_key
    from sollol.core.access import hash_key, new_key
    from sollol.core.processes import wait_http

    key, port = new_key(), free_port()
    values = {**local_cluster.overrides(), "gateway_port": port,
              "api_keys": [{"name": "me", "hash": hash_key(key), "admin": True}]}
    config = write(tmp_path, values)
    proc = processes.start("sollol-run", [sys.executable, "-m", "sollol", "run", "--config",
                                          str(config)], env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/api/version", process=proc, timeout=60,
              headers={"Authorization": f"Bearer {key}"})
    reply = httpx.post(url + "/api/generate", timeout=300, headers={
        "Authorization": f"Bearer {key}"}, json={
        "model": "sollol-demo-large", "prompt": "hi", "stream": False,
        "options": {"num_predict": 2}})
    assert reply.status_code == 200 and reply.headers["x-sollol-route"] == "sharding"
    rpc_subject = f"rpc-server {local_cluster.rpc[0].address}"

    code, output, findings = doctor(config)
    assert code == 0, output
    subjects = by_subject(findings)
    assert subjects[f"gateway port 127.0.0.1:{port}"]["status"] == "ok", output
    assert "already running here (it requires keys)" in output
    assert subjects[rpc_subject]["status"] == "warn", output
    assert "sent no key" in subjects[rpc_subject]["fix"]
    assert "--save" in subjects[rpc_subject]["fix"]

    save_key(key)  # what `sollol keys create me --admin --save` does
    code, output, findings = doctor(config)
    assert code == 0, output
    assert all(f["status"] == "ok" for f in findings), output
    assert "busy by design" in by_subject(findings)[rpc_subject]["detail"]
