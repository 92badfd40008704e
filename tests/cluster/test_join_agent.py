"""`sollol join` as a user runs it, against a real gateway on 127.0.0.1: its rpc-server (on
loopback only) joins under its name and serves a sharded request through the mutual-TLS tunnel;
SIGTERM leaves and stops everything; a wrong token exits non-zero with the reason; a restarted
gateway gets the worker back by itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomli_w

from sollol.core.processes import descendants, free_port

pytestmark = [pytest.mark.llamacpp, pytest.mark.slow]


def until(poll: Callable[..., Any], check: Callable[[], Any], what: str, agent: Agent,
          timeout: float) -> Any:
    """`poll`, with the agent's output in the failure."""
    def checked() -> Any:
        assert agent.proc.poll() is None, f"sollol join exited:\n{agent.text()[-4000:]}"
        return check()

    try:
        return poll(checked, what, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; sollol join said:\n{agent.text()[-4000:]}") from None


def nodes(url: str) -> dict[str, dict[str, Any]]:
    """The rpc-servers the gateway's sharding route has, by id (a member's: `rpc:NAME`)."""
    reply = httpx.get(url + "/sollol/routes/sharding", timeout=10, trust_env=False)
    return {n["id"]: {**n, "health": "healthy" if n["healthy"] else "unhealthy"}
            for n in reply.json()["backends"]}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def listening(pid: int) -> set[str]:
    """The local addresses `pid` listens on (iproute2's ss)."""
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, timeout=10).stdout
    return {line.split()[3] for line in out.splitlines() if f"pid={pid}," in line}


class Agent:
    """One `sollol join` process of the test."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.handle = log.open("wb")
        self.proc = subprocess.Popen(argv, env=env, stdout=self.handle,
                                     stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.handle.close()


@pytest.fixture
def agents(tmp_path: Path, llama_binaries: Any) -> Iterator[Callable[..., Agent]]:
    """`agents(url, token, name, *more)`: start `sollol join`; stopped at teardown."""
    config = tmp_path / "worker.toml"
    config.write_text(tomli_w.dumps({"llama_cpp_dir": str(llama_binaries.rpc_server.parent),
                                     "rpc_state_dir": str(tmp_path / "worker-rpc")}))
    started: list[Agent] = []

    def start(url: str, token: str, name: str, *more: str) -> Agent:
        port = free_port()
        argv = [sys.executable, "-m", "sollol", "join", url, "--token", token, "--name", name,
                "--listen", f"127.0.0.1:{port}", "--threads", "1", "--no-pool",
                "--state-dir", str(tmp_path / name), "--config", str(config), *more]
        agent = Agent(argv, {**os.environ, "SOLLOL_CONFIG": str(config)},
                      tmp_path / f"{name}-{len(started)}.log")
        started.append(agent)
        return agent

    try:
        yield start
    finally:
        for agent in reversed(started):
            agent.stop()


def gateway_config(tmp_path: Path, tiny_model: Path, llama_binaries: Any,
                   **more: Any) -> dict[str, Any]:
    return {"model_sharding_enabled": True, "task_distribution_enabled": False,
            "llama_cpp_dir": str(llama_binaries.llama_server.parent),
            "rpc_state_dir": str(tmp_path / "gateway-rpc"),
            "cluster_state_dir": str(tmp_path / "cluster"), "gguf_dirs": [str(tiny_model.parent)],
            "health_interval": 0.5, "ollama_nodes": [], **more}


def start_gateway(port: int, config: dict[str, Any]) -> Any:
    from sollol.core.runtime import ClusterRuntime
    from sollol.gateway import GatewayThread

    return GatewayThread(ClusterRuntime.from_config(overrides=config), port=port).start()


@pytest.fixture
def gateways() -> Iterator[Callable[..., Any]]:
    running: list[Any] = []

    def start(port: int, config: dict[str, Any]) -> Any:
        gateway = start_gateway(port, config)
        running.append(gateway)
        return gateway

    try:
        yield start
    finally:
        for gateway in reversed(running):
            gateway.stop()


def new_token(url: str) -> str:
    reply = httpx.post(url + "/sollol/cluster/tokens", json={"note": "test"}, timeout=10,
                       trust_env=False)
    assert reply.status_code == 201, reply.text
    return str(reply.json()["token"])


def test_join_serves_a_sharded_request_then_sigterm_leaves_and_stops_everything(
    agents: Callable[..., Agent], gateways: Callable[..., Any], tmp_path: Path,
    tiny_model: Path, llama_binaries: Any, poll: Callable[..., Any],
) -> None:
    gateway = gateways(free_port(), gateway_config(tmp_path, tiny_model, llama_binaries))
    agent = agents(gateway.url, new_token(gateway.url), "w1")
    joined = until(poll, lambda: nodes(gateway.url).get("rpc:w1", {}).get("health") == "healthy"
                   and nodes(gateway.url)["rpc:w1"], "rpc:w1 healthy", agent, 180)
    assert joined["address"].startswith("127.0.0.1:")
    assert "joined" in agent.text() and "loopback only" in agent.text()
    # the rpc-server this machine runs listens on loopback only; the agent's tunnel is all
    # the gateway reaches
    children = descendants(agent.proc.pid)
    (rpc_server,) = [pid for pid in children
                     if "ggml-rpc-server" in Path(f"/proc/{pid}/cmdline").read_text()]
    assert listening(rpc_server) and all(a.startswith("127.0.0.1:")
                                         for a in listening(rpc_server))
    reply = httpx.post(gateway.url + "/api/generate", timeout=180, trust_env=False, json={
        "model": tiny_model.stem, "prompt": "hi", "stream": False,
        "options": {"num_predict": 4}})
    assert reply.status_code == 200, reply.text + agent.text()
    assert reply.json()["eval_count"] > 0
    sharding = httpx.get(gateway.url + "/sollol/routes/sharding", timeout=10).json()
    (coordinator,) = sharding["coordinators"]
    assert [b["address"] for b in coordinator["layers"]["backends"]] == [joined["address"]]

    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(60) == 0, agent.text()
    assert "w1 left the cluster" in agent.text()
    poll(lambda: "rpc:w1" not in nodes(gateway.url), "rpc:w1 gone from /sollol/nodes", 10)
    assert not [pid for pid in children if alive(pid)]  # rpc serve and ggml-rpc-server


def test_a_wrong_token_is_refused_with_the_reason_and_leaves_nothing_running(
    agents: Callable[..., Agent], gateways: Callable[..., Any], tmp_path: Path,
    tiny_model: Path, llama_binaries: Any,
) -> None:
    gateway = gateways(free_port(), gateway_config(tmp_path, tiny_model, llama_binaries))
    token = new_token(gateway.url)
    token_id, secret, pin = token.removeprefix("sollol-join-").split(".")
    wrong = f"sollol-join-{token_id}.{'A' * 43}.{pin}"
    agent = agents(gateway.url, wrong, "w9")
    assert agent.proc.wait(180) == 1, agent.text()
    assert "refused to let 'w9' join (HTTP 401)" in agent.text()
    assert not descendants(agent.proc.pid)
    assert "w9" not in str(nodes(gateway.url))
    other = agents(gateway.url, f"sollol-join-{token_id}.{secret}.{'0' * 32}", "w8", "--no-rpc")
    assert other.proc.wait(60) == 1, other.text()  # the token is for another cluster's CA
    assert "is not the gateway this token is for" in other.text()


def test_a_restarted_gateway_gets_the_worker_back_by_itself(
    agents: Callable[..., Agent], gateways: Callable[..., Any], tmp_path: Path,
    tiny_model: Path, llama_binaries: Any, poll: Callable[..., Any],
) -> None:
    port = free_port()
    config = gateway_config(tmp_path, tiny_model, llama_binaries, heartbeat_interval=0.5)
    first = start_gateway(port, config)
    try:
        agent = agents(first.url, new_token(first.url), "w2")
        until(poll, lambda: nodes(first.url).get("rpc:w2", {}).get("health") == "healthy",
              "rpc:w2 healthy", agent, 180)
    finally:
        first.stop()
    until(poll, lambda: "lost the gateway" in agent.text(), "the worker to notice", agent, 60)
    second = gateways(port, config)  # same state dir: the member and its pin are known
    back = until(poll, lambda: nodes(second.url).get("rpc:w2", {}).get("health") == "healthy"
                 and nodes(second.url)["rpc:w2"], "rpc:w2 back", agent, 60)
    assert back["address"].startswith("127.0.0.1:")
    assert "the gateway answers again" in agent.text()
    assert agent.proc.poll() is None
