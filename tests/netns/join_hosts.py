"""The hosts of tests/netns/netns_join.py: a gateway with access keys, three machines joined by
one `sollol join` command each, an attacker; and what the tests ask of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import httpx

from sollol.core.processes import ManagedProcess, wait_http
from sollol.testing.netns import Host, Network

TUNNEL_PORT = 50053
MEMBER_TIMEOUT = 4.0
SETTINGS = {"member_timeout": MEMBER_TIMEOUT, "heartbeat_interval": 1.0,
            "health_interval": 0.5, "rpc_probe_timeout": 1.0, "rpc_link_timeout": 3.0,
            "connect_timeout": 1.0, "request_timeout": 60.0, "pool_eject_seconds": 1.0,
            "pool_health_timeout": 1.0, "join_failure_limit": 10,
            "join_failure_window": 60.0}
CONFIG = """\
task_distribution_enabled = true
model_sharding_enabled = true
rpc_placement = "all"
rpc_max_coordinators = 1
rpc_ctx_size = 2048
rpc_discover_loopback = false
routing_policy = "size-threshold"

[policy_settings.size-threshold]
min_parameters = 1   # the generated GGUF model is sharded; the Ollama node's model is pooled
"""


def sollol(*args: str, env: dict[str, str], host: Host | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """A `sollol` command, on `host` (its namespace) or in the outer namespace."""
    prefix = ["ip", "netns", "exec", host.namespace] if host is not None else []
    return subprocess.run([*prefix, sys.executable, "-m", "sollol", *args], env=env, text=True,
                          capture_output=True, timeout=timeout, check=False)


def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `check` until it returns something true (a deadline against hanging)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@attrs.define
class Joined:
    """The cluster of the test and how to reach and change it."""

    net: Network
    env: dict[str, str]
    """The gateway's environment (config file, cluster state dir, binaries, settings)."""
    worker_env: dict[str, str]
    model: str
    admin_key: str = ""
    gateway: ManagedProcess = attrs.field(default=None)
    token: str = ""
    workers: dict[str, ManagedProcess] = attrs.field(factory=dict)
    figures: list[dict[str, Any]] = attrs.field(factory=list)
    foreign_cert: Path = attrs.field(default=None)
    foreign_key: Path = attrs.field(default=None)
    tunnel_port: int = TUNNEL_PORT
    member_timeout: float = MEMBER_TIMEOUT
    until = staticmethod(until)

    @property
    def gw(self) -> Host:
        return self.net.hosts["gw"]

    @property
    def attacker(self) -> Host:
        return self.net.hosts["attacker"]

    @property
    def url(self) -> str:
        return f"http://{self.gw.address}:11435"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    @property
    def pin(self) -> str:
        return self.token.rsplit(".", 1)[1]

    @property
    def token_id(self) -> str:
        return self.token_id_of(self.token)

    @staticmethod
    def token_id_of(token: str) -> str:
        return token.removeprefix("sollol-join-").split(".")[0]

    # ---- the gateway

    def start_gateway(self) -> ManagedProcess:
        self.gateway = self.gw.start("gateway", [
            sys.executable, "-m", "sollol", "run", "--host", self.gw.address, "--port", "11435",
            "--grace", "1"], env=self.env)
        wait_http(self.url + "/api/version", process=self.gateway, headers=self.auth,
                  timeout=60)
        return self.gateway

    def gateway_log(self) -> str:
        return self.gateway.log_text()

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        reply = httpx.request(method, self.url + path, json=body, timeout=30, trust_env=False,
                              # as the CLI sends it: changes need what no web form can send
                              headers={**self.auth, "X-Requested-With": "sollol-tests"})
        assert reply.status_code < 300, (method, path, reply.status_code, reply.text)
        return reply.json()

    def new_token(self, note: str = "") -> str:
        done = sollol("cluster", "token", "create", "--note", note, "--gateway", self.url,
                      env={**self.env, "SOLLOL_KEY": self.admin_key})
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1]

    # ---- what the cluster shows

    def nodes(self) -> list[dict[str, Any]]:
        """`/sollol/nodes` (pool nodes) and the sharding route's rpc-servers, one list."""
        pool = self.admin("GET", "/sollol/nodes").get("nodes", [])
        return [*pool, *self.snapshot().get("backends", [])]

    def snapshot(self) -> dict[str, Any]:
        return self.admin("GET", "/sollol/routes/sharding")

    @staticmethod
    def _member(entry: dict[str, Any]) -> str | None:
        return entry.get("member") or (entry.get("labels") or {}).get("member")

    def rpc_members(self, nodes: list[dict[str, Any]]) -> set[str]:
        return {m for n in nodes if (m := self._member(n)) and "devices" in n
                and n.get("healthy", n.get("health") == "healthy")}

    def pool_members(self, nodes: list[dict[str, Any]]) -> set[str]:
        return {m for n in nodes if (m := self._member(n)) and n.get("health") == "healthy"}

    def endpoints(self, *names: str) -> list[str]:
        """The gateway's local tunnel endpoints of these members' rpc-servers."""
        members = {m["name"]: m for m in self.admin("GET", "/sollol/cluster/members")["members"]}
        return [members[name]["backends"]["sollol-rpc"] for name in names]

    # ---- workers

    def join_argv(self, name: str, token: str, *extra: str) -> list[str]:
        host = self.net.hosts.get(name) or self.attacker
        return [sys.executable, "-m", "sollol", "join", self.url, "--token", token, "--name",
                name, "--listen", f"{host.address}:{TUNNEL_PORT}", "--state-dir",
                str(self.net.log_dir / f"state-{name}"), *extra]

    def start_worker(self, name: str) -> ManagedProcess:
        extra = ("--no-rpc",) if name == "w3" else ()
        proc = self.net.hosts[name].start(f"join-{name}", self.join_argv(name, self.token, *extra),
                                          env=self.worker_env)
        self.workers[name] = proc
        return proc

    def join_once(self, host: Host, name: str, token: str) -> subprocess.CompletedProcess[str]:
        """`sollol join` with a token that must be refused: it exits with a message."""
        argv = self.join_argv(name, token, "--no-pool")
        argv[argv.index("--listen") + 1] = f"{host.address}:{TUNNEL_PORT + 1}"
        return subprocess.run(["ip", "netns", "exec", host.namespace, *argv], text=True,
                              capture_output=True, timeout=60, env=self.worker_env, check=False)

    def captured_join(self, name: str) -> bytes:
        """A valid join exactly as a worker sends it, sent once from the outer namespace (it
        succeeds): the bytes an eavesdropper on the LAN would have captured."""
        from sollol_plugins.cluster_join.ca import generate_key_pem, public_key_pem
        from sollol_plugins.cluster_join.handshake import join_request
        from sollol_plugins.cluster_join.tokens import JoinToken

        with httpx.Client(base_url=self.url, timeout=30, trust_env=False) as client:
            nonce = client.get("/sollol/cluster/challenge").json()["nonce"]
            body = json.dumps(join_request(
                JoinToken.parse(self.token), nonce, name, public_key_pem(generate_key_pem()),
                TUNNEL_PORT, {}, [])).encode()
            first = client.post("/sollol/cluster/join", content=body,
                                headers={"content-type": "application/json"})
        assert first.status_code == 200, first.text
        return body


def start_cluster(net: Network, binaries: Any, model: Path) -> Joined:
    """Hosts, keys, the gateway, a token, three joined workers; waits until all serve."""
    for name in ("gw", "w1", "w2", "w3", "attacker"):
        net.add_host(name)
    log = net.log_dir
    config = log / "config.toml"
    config.write_text(CONFIG)
    base = {k: v for k, v in os.environ.items() if not k.startswith("SOLLOL_")}
    env = {**base, "SOLLOL_CONFIG": str(config), "SOLLOL_CLUSTER_STATE_DIR": str(log / "cluster"),
           "SOLLOL_LLAMA_CPP_DIR": str(Path(binaries.llama_server).parent),
           "SOLLOL_RPC_STATE_DIR": str(log / "sharding"),
           "SOLLOL_GGUF_DIRS": json.dumps([str(model.parent)]),
           **{f"SOLLOL_{k.upper()}": str(v) for k, v in SETTINGS.items()}}
    worker_env = {**base, "SOLLOL_CONFIG": str(log / "worker.toml"),
                  "SOLLOL_LLAMA_CPP_DIR": str(Path(binaries.rpc_server).parent)}
    c = Joined(net=net, env=env, worker_env=worker_env, model=str(model))
    made = sollol("keys", "create", "admin", "--admin", env=env)
    assert made.returncode == 0, made.stderr
    c.admin_key = made.stdout.strip().splitlines()[-1]
    c.start_gateway()
    c.token = c.new_token(note="acceptance")
    # the Ollama machine: an emulated Ollama on its own loopback, found by `sollol join`
    w3 = net.hosts["w3"]
    ollama = w3.start("ollama", [sys.executable, "-m", "sollol.testing.emulator", "--host",
                                 "127.0.0.1", "--port", "11434", "--model", "m",
                                 "--response-text", "joined through the tunnel"])
    until(lambda: subprocess.run(["ip", "netns", "exec", w3.namespace, "ss", "-Hltn",
                                  "sport = :11434"], capture_output=True, text=True,
                                 check=False).stdout.strip() or not ollama.alive(), 30,
          "the emulated Ollama on w3")
    assert ollama.alive(), ollama.log_text()
    for name in ("w1", "w2", "w3"):
        c.start_worker(name)
    until(lambda: {"w1", "w2"} <= c.rpc_members(c.nodes())
          and "w3" in c.pool_members(c.nodes()), 90, "three joined machines serving")
    c.foreign_cert, c.foreign_key = _foreign_identity(log / "foreign")
    return c


def _foreign_identity(folder: Path) -> tuple[Path, Path]:
    """A gateway certificate of another cluster CA (the attacker's own)."""
    from sollol_plugins.cluster_join.ca import ClusterCA

    ca = ClusterCA.load_or_create(folder)
    return ca.gateway_cert_path, ca.gateway_key_path
