"""Claude Code and the Codex CLI against a gateway over one large-context llama-server.

Run ONLY inside `sollol.testing.netns.run_isolated` (test_agent_clients.py does): a network
namespace with loopback alone, so the agents' telemetry and update checks cannot leave the
machine, and the node, the gateway and the agents all run in it. The model is a tiny
random-weight one, so the answers are noise: what is checked is what the gateway saw and sent
(a recording proxy sits between each agent and the gateway).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from clients_support import ADMIN_KEY, CLIENT_KEY, KEYS, NODE_MODULES, npm_package
from recording_proxy import RecordingProxy, Seen, responses

from sollol.testing.netns import require_isolated

MODEL = "tiny"
CONTEXT = 65536
"""The node's context: Claude Code's first request is ~10k tokens of this tiny tokenizer,
Codex's ~11.5k."""
MAX_OUTPUT = 64
AGENT_TIMEOUT = 420.0
QUIET = {  # the agents' own switches against non-essential traffic (the namespace blocks it too)
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1",
    "DISABLE_AUTOUPDATER": "1", "DISABLE_ERROR_REPORTING": "1", "DISABLE_BUG_COMMAND": "1",
}
CODEX_CONFIG = """model = "{model}"
model_provider = "sollol"
check_for_update_on_startup = false
[model_providers.sollol]
name = "SOLLOL"
base_url = "{url}/v1"
env_key = "SOLLOL_API_KEY"
wire_api = "responses"
[analytics]
enabled = false
"""


@pytest.fixture
def agent_gateway(processes: Any, llama_binaries: Any, tmp_path: Path) -> Any:
    """One llama-server with a large context (its model records it too: llama-server caps a
    slot at the model's training context), the gateway over it with keys, a proxy in front."""
    from sollol.core.processes import free_port, wait_http
    from sollol.core.runtime import ClusterRuntime
    from sollol.gateway import GatewayThread
    from sollol.testing.tiny_models import TinyModelSpec, make_tiny_model

    require_isolated()
    gguf = make_tiny_model(tmp_path / "agent.gguf", spec=TinyModelSpec(
        layers=2, dim=32, context=CONTEXT, name="agent-tiny"))
    port = free_port()
    # A random-weight model seldom ends its turn: a bias towards end-of-text (token 2) ends
    # most answers within a few tokens, as a real model's "hi" would (Claude Code treats an
    # answer cut at max_tokens as an error); -n caps the rest
    proc = processes.start("llama-server", [
        llama_binaries.llama_server, "-m", gguf, "--alias", MODEL, "--host", "127.0.0.1",
        "--port", str(port), "-t", "2", "-c", str(CONTEXT), "-fa", "on", "-n", str(MAX_OUTPUT),
        "--logit-bias", "2+3"])
    wait_http(f"http://127.0.0.1:{port}/health", process=proc, timeout=120)
    overrides = {"ollama_nodes": [f"openai://127.0.0.1:{port}"], "api_keys": KEYS,
                 "model_sharding_enabled": False}
    thread = GatewayThread(ClusterRuntime.from_config(overrides=overrides)).start()
    host, gw_port = thread.url.removeprefix("http://").rsplit(":", 1)
    proxy = RecordingProxy((host, int(gw_port))).start()
    try:
        yield thread, proxy
    finally:
        proxy.stop()
        thread.stop()


@pytest.fixture
def keyless_gateway(agent_gateway: Any) -> Any:
    """A second gateway over the same node with no keys (a loopback default): Codex's `--oss`
    mode sends none."""
    from sollol.core.runtime import ClusterRuntime
    from sollol.gateway import GatewayThread

    thread, _ = agent_gateway
    nodes = thread.gateway.cluster.config["ollama_nodes"]
    keyless = GatewayThread(ClusterRuntime.from_config(overrides={
        "ollama_nodes": nodes, "model_sharding_enabled": False})).start()
    host, port = keyless.url.removeprefix("http://").rsplit(":", 1)
    proxy = RecordingProxy((host, int(port))).start()
    try:
        yield keyless, proxy
    finally:
        proxy.stop()
        keyless.stop()


def agent_env(home: Path, **extra: str) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    return {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8", **QUIET, **extra}


def run_agent(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=AGENT_TIMEOUT, stdin=subprocess.DEVNULL, check=False)


def seen(proxy: RecordingProxy) -> list[Seen]:
    return [r for exchange in proxy.exchanges for r in responses(exchange)]


def gateway_events(url: str) -> list[dict[str, Any]]:
    reply = httpx.get(url + "/sollol/events", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                      timeout=30)
    return list(reply.json()["events"])


def check_replies(replies: list[Seen]) -> None:
    """Every reply a 2xx, or a 4xx whose JSON body says what was wrong."""
    for reply in replies:
        if reply.status < 300:
            continue
        assert 400 <= reply.status < 500, (reply.request, reply.status, reply.body[:500])
        body = json.loads(reply.body)
        error = body.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        assert isinstance(message, str) and message, (reply.request, reply.body[:500])


def check_stream(reply: Seen, first: str, last: str) -> None:
    """Well-formed events: JSON data whose `type` is the `event:` name, `first` to `last`."""
    kinds = [e["data"].get("type") for e in reply.events if isinstance(e["data"], dict)]
    assert len(kinds) == len(reply.events), reply.events  # every data line is a JSON object
    assert all(e["event"] in (None, e["data"]["type"]) for e in reply.events), reply.events
    assert kinds[0] == first and kinds[-1] == last, kinds


def report(name: str, data: dict[str, Any]) -> None:
    path = os.environ.get("CLIENTS_AGENT_REPORT")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps({"client": name, **data}) + "\n")


def test_claude_code_headless(agent_gateway: Any, tmp_path: Path) -> None:
    gateway, proxy = agent_gateway
    version = json.loads((npm_package("@anthropic-ai/claude-code") / "package.json")
                         .read_text())["version"]
    env = agent_env(tmp_path / "home", ANTHROPIC_BASE_URL=proxy.url,
                    ANTHROPIC_API_KEY=CLIENT_KEY, ANTHROPIC_DEFAULT_HAIKU_MODEL=MODEL,
                    ANTHROPIC_SMALL_FAST_MODEL=MODEL, CLAUDE_CODE_MAX_OUTPUT_TOKENS=str(MAX_OUTPUT))
    done = run_agent([str(NODE_MODULES / ".bin" / "claude"), "-p", "say hi", "--model", MODEL,
                      "--output-format", "json"], env, tmp_path)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    replies = seen(proxy)
    messages = [r for r in replies if r.request.startswith("POST /v1/messages")
                and not r.request.startswith("POST /v1/messages/count_tokens")]
    events = gateway_events(gateway.url)
    fields = ("subtype", "is_error", "result", "terminal_reason", "num_turns")
    report("claude-code", {"version": version, "exit": done.returncode,
                           "result": {k: str(result.get(k))[:300] for k in fields},
                           "requests": [(r.request, r.status) for r in replies],
                           "gateway": [(e["endpoint"], e["status"], e["prompt_tokens"],
                                        e["tokens"]) for e in events]})
    assert done.returncode == 0 and result["is_error"] is False, (done.stdout, done.stderr)
    check_replies(replies)
    assert messages and all(r.status == 200 for r in messages)
    for reply in messages:
        if reply.events:
            check_stream(reply, "message_start", "message_stop")
    turns = [e for e in events if e["api"] == "anthropic" and e["status"] == 200]
    assert turns and all(e["ok"] for e in turns), events
    assert not [e for e in events if e["status"] >= 500 or e["status"] == 499], events


def test_codex_exec(agent_gateway: Any, tmp_path: Path) -> None:
    gateway, proxy = agent_gateway
    version = json.loads((npm_package("@openai/codex") / "package.json").read_text())["version"]
    codex_home = tmp_path / "codex"
    codex_home.mkdir()
    (codex_home / "config.toml").write_text(CODEX_CONFIG.format(model=MODEL, url=proxy.url))
    env = agent_env(tmp_path / "home", CODEX_HOME=str(codex_home), SOLLOL_API_KEY=CLIENT_KEY)
    done = run_agent([str(NODE_MODULES / ".bin" / "codex"), "exec", "--skip-git-repo-check",
                      "--json", "say hi"], env, tmp_path)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    kinds = [line["type"] for line in lines]
    replies = seen(proxy)
    turns = [r for r in replies if r.request.startswith("POST /v1/responses")]
    events = gateway_events(gateway.url)
    report("codex", {"version": version, "exit": done.returncode, "events": kinds,
                     "requests": [(r.request, r.status) for r in replies],
                     "gateway": [(e["endpoint"], e["status"], e["prompt_tokens"], e["tokens"])
                                 for e in events]})
    assert done.returncode == 0 and "turn.completed" in kinds, (done.stdout, done.stderr)
    check_replies(replies)
    assert turns and all(r.status == 200 for r in turns)
    for reply in turns:
        check_stream(reply, "response.created", "response.completed")
        created = reply.events[0]["data"]["response"]
        assert isinstance(created["output"], list) and created["status"] == "in_progress"
    # Codex hangs up right after response.completed: still a success (issue 26.2)
    responses_events = [e for e in events if e["api"] == "openai"]
    assert responses_events and all(e["status"] == 200 and e["ok"] for e in responses_events)


def test_codex_exec_oss_mode(keyless_gateway: Any, tmp_path: Path) -> None:
    """`codex exec --oss --local-provider ollama`, its Ollama base URL set to the gateway."""
    gateway, proxy = keyless_gateway
    codex_home = tmp_path / "codex"
    codex_home.mkdir()
    (codex_home / "config.toml").write_text("check_for_update_on_startup = false\n"
                                            "[analytics]\nenabled = false\n")
    env = agent_env(tmp_path / "home", CODEX_HOME=str(codex_home),
                    CODEX_OSS_BASE_URL=proxy.url + "/v1")
    done = run_agent([str(NODE_MODULES / ".bin" / "codex"), "exec", "--oss", "--local-provider",
                      "ollama", "-m", MODEL, "--skip-git-repo-check", "--json", "say hi"],
                     env, tmp_path)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    kinds = [line["type"] for line in lines]
    replies = seen(proxy)
    events = gateway_events(gateway.url)
    version = json.loads((npm_package("@openai/codex") / "package.json").read_text())["version"]
    report("codex --oss", {"version": version, "exit": done.returncode, "events": kinds,
                           "requests": [(r.request, r.status) for r in replies],
                           "gateway": [(e["endpoint"], e["status"], e["prompt_tokens"],
                                        e["tokens"]) for e in events]})
    assert done.returncode == 0 and "turn.completed" in kinds, (done.stdout, done.stderr)
    check_replies(replies)
    turns = [r for r in replies if r.request.startswith("POST /v1/responses")]
    assert turns and all(r.status == 200 for r in turns)
    for reply in turns:
        check_stream(reply, "response.created", "response.completed")
    assert all(e["status"] == 200 and e["ok"] for e in events), events
