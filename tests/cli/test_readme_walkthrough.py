"""The README's "Use it with your real cluster" walk-through, followed as written, from a clean
user account: on the gateway keys, sharding on, run, a join token; on each machine `sollol join`;
then a client, status, members, route, shard status, the dashboard; and the by-hand rpc-server.

The test reads the section's code blocks and runs them, with only the substitutions a test must
make: the gateway listens on a free port and its URL and the token go into the join line; two
"machines" on one test machine differ in name, tunnel port and state dir, and one offers an
emulated Ollama node (`--pool-node`) instead of one on 11434; `min_parameters` becomes the
threshold between the generated models, which live in a generated Ollama store
(`ollama_models_dir`, as the README says). `sollol llamacpp install` is taken as done: its cache
folder under the fresh home holds the llama.cpp build the suite uses. Every `sollol` command is
the installed command in a child process with a fresh HOME and no SOLLOL_*/OLLAMA_*/XDG_*
variables, unless the README itself tells the user to set one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from sollol.core.processes import free_port, wait_http, wait_port
from sollol.local import THRESHOLD, ensure_models

pytestmark = [pytest.mark.llamacpp, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
SOLLOL = [sys.executable, "-m", "sollol"]


def walk_through() -> tuple[str, list[str]]:
    """The README section and its fenced code blocks, in order."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Use it with your real cluster")
    section = readme[start:readme.index("\n## ", start + 1)]
    return section, re.findall(r"```[a-z]*\n(.*?)```", section, re.S)


def commands(block: str) -> list[str]:
    """The command lines of a shell block, comments dropped."""
    return [line.split("#", 1)[0].strip() for line in block.splitlines()
            if line.split("#", 1)[0].strip()]


class Account:
    """A user who has never run SOLLOL: a fresh home, nothing of ours in the environment."""

    def __init__(self, home: Path) -> None:
        home.mkdir(parents=True)
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("SOLLOL_", "OLLAMA_", "XDG_"))}
        self.env["HOME"] = str(home)
        self.home = home

    def run(self, line: str, **env: str) -> subprocess.CompletedProcess[str]:
        argv = line.split()
        assert argv[0] == "sollol", line
        done = subprocess.run([*SOLLOL, *argv[1:]], env={**self.env, **env}, text=True,
                              capture_output=True, timeout=300)
        return done

    def ok(self, line: str, **env: str) -> str:
        done = self.run(line, **env)
        assert done.returncode == 0, f"`{line}` exited {done.returncode}:\n{done.stdout}\n" \
                                     f"{done.stderr}"
        return done.stdout


def _join_line(block: str, url: str, token: str, extra: list[str]) -> list[str]:
    """The README's `sollol join` line with the gateway's URL and the token put in, plus what
    two "machines" on one test machine must differ in (name, tunnel port, state dir) and what
    they offer (a test cannot run Ollama on 11434)."""
    (line,) = [c for c in commands(block) if c.startswith("sollol join")]
    assert "http://GATEWAY:11435" in line and "--token TOKEN" in line, line
    argv = line.replace("http://GATEWAY:11435", url).replace("TOKEN", token).split()
    return [*SOLLOL, *argv[1:], *extra]


def test_the_readme_walk_through_works_as_written(
    tmp_path: Path, emulator, processes, llama_binaries,
) -> None:
    section, blocks = walk_through()
    gateway_block, join_block, by_hand_block = blocks[:3]
    user = Account(tmp_path / "home")
    if llama_binaries.source == "cache":  # as `sollol llamacpp install` leaves it
        cache = user.home / ".cache" / "sollol"
        cache.mkdir(parents=True)
        (cache / "llama.cpp").symlink_to(llama_binaries.llama_server.parents[2])
        where = str(cache)
    else:
        user.ok(f"sollol config set llama_cpp_dir {llama_binaries.llama_server.parent}")
        where = str(llama_binaries.llama_server.parent)
    which = user.ok("sollol llamacpp which")
    assert where in which and "llama-server" in which, which

    # the test's own settings: the models (a generated Ollama store, as the README says to set
    # when the store is elsewhere), a free port, and a threshold between the generated models
    models = ensure_models(tmp_path / "models")
    user.ok(f"sollol config set ollama_models_dir {models.store}")
    port = free_port()
    user.ok(f"sollol config set gateway_port {port}")
    user.ok(f"sollol config set policy_settings.size-threshold.min_parameters {THRESHOLD}")

    # the gateway machine: the README's block, line by line
    key = token = gateway = None
    url = f"http://127.0.0.1:{port}"
    auth: dict[str, str] = {}
    for line in commands(gateway_block):
        if line.startswith("sollol run"):
            gateway = processes.start("walk-gateway", [*SOLLOL, *line.split()[1:]],
                                      env=user.env, cwd=tmp_path)
            wait_http(url + "/api/version", process=gateway, headers=auth)
            continue
        out = user.ok(line)
        if line.startswith("sollol keys create"):
            key = out.strip().splitlines()[-1]
            auth = {"Authorization": f"Bearer {key}"}
        if line.startswith("sollol cluster token create"):
            token = out.strip().splitlines()[-1]
    assert key and token and gateway is not None
    assert token.startswith("sollol-join-"), token

    # every other machine: the README's one command; here two "machines" on loopback, one
    # offering its rpc-server, one its Ollama node (an emulated one)
    node = emulator(models=[models.small.name])
    machines = {
        "shard-box": ["--no-pool"],
        "ollama-box": ["--no-rpc", "--pool-node", f"http://{node.address}"],
    }
    for name, offers in machines.items():
        extra = ["--name", name, "--listen", f"127.0.0.1:{free_port()}",
                 "--state-dir", str(tmp_path / f"join-{name}"), *offers]
        processes.start(f"walk-join-{name}", _join_line(join_block, url, token, extra),
                        env=user.env, cwd=tmp_path)

    def joined() -> bool:
        nodes = httpx.get(url + "/sollol/nodes", headers=auth, timeout=30).json()["nodes"]
        shards = httpx.get(url + "/sollol/routes/sharding", headers=auth,
                           timeout=30).json()["backends"]
        return any(n.get("member") == "ollama-box" and n.get("health") == "healthy"
                   for n in nodes) and any(b.get("healthy") for b in shards)

    deadline = time.monotonic() + 120
    while not joined():
        assert time.monotonic() < deadline, "the joined machines never served"
        time.sleep(0.2)

    # a client, with the key as the README says
    for model, route in ((models.small.name, "pool"), (models.large.name, "sharding")):
        reply = httpx.post(url + "/api/chat", headers=auth, timeout=300, json={
            "model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False,
            "options": {"num_predict": 4}})
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-sollol-route"] == route
    assert httpx.get(url + "/api/tags").status_code == 401  # beyond 127.0.0.1: keys

    # what the README tells the operator to run next (with what it says to set, if anything)
    told = {"SOLLOL_KEY": key} if "SOLLOL_KEY" in section else {}
    status = user.ok("sollol status", **told)
    assert "ollama-box" in status, status
    members = user.ok("sollol cluster members", **told)
    assert "shard-box" in members and "ollama-box" in members, members
    route = user.ok(f"sollol route {models.large.name}", **told)
    assert f"{models.large.name} -> sharding" in route, route
    shards = user.ok("sollol shard status", **told)
    assert f"model {models.large.name}" in shards and "layers offloaded" in shards, shards
    assert "source: gateway" in shards, shards  # the gateway's live view, not pid files
    page = httpx.get(url + "/dashboard", auth=("admin", key))
    assert page.status_code == 200 and "<html" in page.text.lower()

    # the machines you run yourself: the README's rpc-server line starts one that answers
    (serve,) = [c for c in commands(by_hand_block) if c.startswith("sollol rpc serve")]
    assert serve.startswith("sollol rpc serve --host")
    rpc_port = free_port()
    argv = [*SOLLOL, *serve.split()[1:-1], "127.0.0.1", "--port", str(rpc_port)]
    rpc = processes.start("walk-rpc", argv, env=user.env, cwd=tmp_path)
    wait_port("127.0.0.1", rpc_port, process=rpc)
