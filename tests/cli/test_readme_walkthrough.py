"""The README's "Use it with your real cluster" walk-through, followed as written, from a clean
user account: keys, config, doctor, run, a client, status, route, shard status, the dashboard.

The test reads the section's code blocks and runs them, with only the substitutions a test must
make: the example addresses become two emulated Ollama nodes and two real rpc-servers on
127.0.0.1 (free ports), `min_parameters` becomes the threshold between the generated models, the
models live in a generated Ollama store (`ollama_models_dir`, as the README says), and the
gateway listens on a free port. `sollol llamacpp install` is taken as done: its cache folder under
the fresh home holds the llama.cpp build the suite uses. Every `sollol` command is the installed
command in a child process with a fresh HOME and no SOLLOL_*/OLLAMA_*/XDG_* variables, unless the
README itself tells the user to set one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
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


def test_the_readme_walk_through_works_as_written(
    tmp_path: Path, emulator, processes, llama_binaries,
) -> None:
    section, blocks = walk_through()
    worker, config_block, gateway_block = blocks[:3]
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

    # the workers: the README's command (the `sollol rpc serve` part of its line, whichever
    # side of the comment it is on), on loopback ports
    (serve,) = [part.removeprefix(" or:").strip() for line in worker.splitlines()
                for part in line.split("#") if "sollol rpc serve" in part]
    assert serve.startswith("sollol rpc serve --host")
    rpc = []
    for index in range(2):
        port = free_port()
        argv = [*SOLLOL, *serve.split()[1:-1], "127.0.0.1", "--port", str(port)]
        rpc.append((f"127.0.0.1:{port}",
                    processes.start(f"walk-rpc-{index}", argv, env=user.env, cwd=tmp_path)))
    for address, proc in rpc:
        wait_port("127.0.0.1", int(address.rsplit(":", 1)[1]), process=proc)

    # the config file, where `sollol config path` says it lives
    models = ensure_models(tmp_path / "models")
    nodes = [emulator(models=[models.small.name]) for _ in range(2)]
    path = Path(user.ok("sollol config path").strip())
    assert path.is_relative_to(user.home)
    text = config_block
    for example, real in zip(("10.0.0.5:11434", "10.0.0.6:11434", "10.0.0.7:50052",
                              "10.0.0.8:50052"),
                             [n.address for n in nodes] + [a for a, _ in rpc], strict=True):
        assert example in text
        text = text.replace(example, real)
    text = text.replace('min_parameters = "13B"', f"min_parameters = {THRESHOLD}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    port = free_port()
    user.ok(f"sollol config set ollama_models_dir {models.store}")
    user.ok(f"sollol config set gateway_port {port}")

    # keys, doctor, run: the README's block, line by line
    key = None
    gateway = None
    for line in commands(gateway_block):
        if line.startswith("sollol run"):
            gateway = processes.start("walk-gateway", [*SOLLOL, *line.split()[1:]],
                                      env=user.env, cwd=tmp_path)
            continue
        out = user.ok(line)
        if line.startswith("sollol keys create"):
            key = out.strip().splitlines()[-1]
    assert key and gateway is not None
    url = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {key}"}
    wait_http(url + "/api/version", process=gateway, headers=auth)

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
    assert all(n.address in status for n in nodes), status
    route = user.ok(f"sollol route {models.large.name}", **told)
    assert f"{models.large.name} -> sharding" in route, route
    shards = user.ok("sollol shard status", **told)
    assert f"model {models.large.name}" in shards and "layers offloaded" in shards, shards
    assert "source: gateway" in shards, shards  # the gateway's live view, not pid files
    page = httpx.get(url + "/dashboard", auth=("admin", key))
    assert page.status_code == 200 and "<html" in page.text.lower()
