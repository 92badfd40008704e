"""Sharding faults under load, between hosts. Runs ONLY inside `run_isolated` (started by
tests/netns/test_netns_faults.py, like tests/netns/netns_faults.py): a sharding-only gateway
(a real `sollol run`) on one host, and two real `ggml-rpc-server` hosts it spreads every model over
(`rpc_placement = "all"`, one coordinator at a time).

Faults: an rpc-server killed, or its link cut (packets vanish, no reset), while a sharded model
generates and while one loads (over a `tbf`-limited link, so the load takes seconds); the gateway
killed while its coordinator runs. Each ends with no process leaked on any host. The rpc-servers
run under `sollol rpc serve`, as an operator would run them.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest

from sollol.core.processes import ManagedProcess, wait_http
from sollol.testing.faultload import (
    LoadResult,
    append_report,
    check_load,
    load_during,
    plan_load,
)
from sollol.testing.netns import Host, Network, require_isolated

REPORT = os.environ.get("NETNS_FAULT_REPORT")
LINK_TIMEOUT = 3.0
"""rpc_link_timeout here: how long a silent link to an rpc-server lasts before it is dropped."""
TIMEOUTS = {"request_timeout": 20.0, "stream_idle_timeout": 2.0, "connect_timeout": 0.5,
            "health_interval": 0.5, "rpc_probe_timeout": 0.5, "rpc_link_timeout": LINK_TIMEOUT}
BOUND = TIMEOUTS["request_timeout"] + 6 + 1
"""A request's longest allowed life: its timeout plus the pool's queue wait, plus a second."""
SLOW_LINK = "20mbit"
"""The loading victim's link: a ~15 MB share takes ~6 s, so a fault lands mid-load."""


@attrs.define
class Sharded:
    """A sharding-only gateway host with two rpc-server hosts."""

    net: Network
    gateway: Host
    shards: list[Host]
    start_shard: Callable[[Host], ManagedProcess]
    start_gateway: Callable[[], ManagedProcess]
    url: str
    model: str
    """The tiny model (~1 MB): generation faults."""
    big: list[str]
    """Two ~30 MB models (one per loading fault, so each load starts from nothing)."""
    figures: list[dict[str, Any]] = attrs.field(factory=list)

    def address(self, host: Host) -> str:
        return f"{host.address}:50052"

    def shard_process(self, host: Host) -> ManagedProcess | None:
        return next((p for p in self.net.processes.processes
                     if p.name == f"{host.name}-rpc-server" and p.alive()), None)

    def snapshot(self) -> dict[str, Any]:
        return httpx.get(self.url + "/sollol/routes/sharding", timeout=10,
                         trust_env=False).json()

    def coordinator(self, model: str) -> dict[str, Any] | None:
        return next((c for c in self.snapshot()["coordinators"] if c["model"] == model), None)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory, llama_binaries: Any,
            tiny_model: Path) -> Iterator[Sharded]:
    from sollol_plugins.llamacpp_rpc.rpc_probe import ProbeError, probe

    from sollol.testing.tiny_models import make_tiny_model

    require_isolated()
    log_dir = tmp_path_factory.mktemp("netns-shards")
    big = [str(make_tiny_model(log_dir / f"big{seed}.gguf", layers=8, dim=384, seed=seed))
           for seed in (1, 2)]
    net = Network(log_dir=log_dir, subnet=78, bridge="sollol-br2")
    try:
        net.start()
        gw = net.add_host("gw2")
        shards = [net.add_host("r1"), net.add_host("r2")]

        def start_shard(host: Host) -> ManagedProcess:
            # through `sollol rpc serve`, which drops a client silent for LINK_TIMEOUT (a
            # coordinator behind a cut link), so the rpc-server serves again once it is back
            proc = host.start("rpc-server", [
                sys.executable, "-m", "sollol", "rpc", "serve", "--host", host.address,
                "--port", "50052", "--threads", "1", "--client-timeout", str(LINK_TIMEOUT)],
                env={**os.environ, "SOLLOL_CONFIG": str(log_dir / "config.toml"),
                     "SOLLOL_LLAMA_CPP_DIR": str(Path(llama_binaries.rpc_server).parent),
                     "SOLLOL_PLUGINS": "llamacpp_rpc"})
            deadline = time.monotonic() + 30
            while True:
                try:
                    probe(host.address, 50052, timeout=1)
                    return proc
                except ProbeError:
                    assert proc.alive() and time.monotonic() < deadline, proc.log_text()
                    time.sleep(0.05)

        env = {**os.environ, "SOLLOL_CONFIG": str(log_dir / "config.toml"),
               "SOLLOL_MODEL_SHARDING_ENABLED": "true",
               "SOLLOL_TASK_DISTRIBUTION_ENABLED": "false",
               "SOLLOL_RPC_BACKENDS": json.dumps([f"{h.address}:50052" for h in shards]),
               "SOLLOL_RPC_STATE_DIR": str(log_dir / "sharding"), "SOLLOL_RPC_CTX_SIZE": "4096",
               "SOLLOL_RPC_PLACEMENT": "all", "SOLLOL_RPC_MAX_COORDINATORS": "1",
               "SOLLOL_LLAMA_CPP_DIR": str(Path(llama_binaries.llama_server).parent),
               "SOLLOL_PLUGINS": "llamacpp_rpc",
               # models resolve only inside these folders (a client names no other file)
               "SOLLOL_GGUF_DIRS": json.dumps([str(tiny_model.parent), str(log_dir)]),
               **{f"SOLLOL_{k.upper()}": str(v) for k, v in TIMEOUTS.items()}}
        url = f"http://{gw.address}:11435"

        def start_gateway() -> ManagedProcess:
            # --insecure: no access keys on a test network no one else can reach
            proc = gw.start("gateway", [sys.executable, "-m", "sollol", "run", "--host",
                                        gw.address, "--port", "11435", "--grace", "1",
                                        "--insecure"], env=env)
            wait_http(url + "/sollol/state", process=proc, timeout=60)
            return proc

        for host in shards:
            start_shard(host)
        start_gateway()
        s = Sharded(net=net, gateway=gw, shards=shards, start_shard=start_shard,
                    start_gateway=start_gateway, url=url, model=str(tiny_model), big=big)
        yield s
        append_report(REPORT, s.figures)
    finally:
        net.close()


def _reply(s: Sharded, model: str | None = None, timeout: float = 120.0) -> float:
    """Seconds until a sharded request succeeds (retrying while the route recovers)."""
    started = time.monotonic()
    body = {"model": model or s.model, "stream": False, "options": {"num_predict": 8},
            "messages": [{"role": "user", "content": "hello"}]}
    last = ""
    while time.monotonic() - started < timeout:
        try:
            reply = httpx.post(s.url + "/api/chat", json=body, timeout=60, trust_env=False)
        except httpx.TimeoutException as exc:  # still recovering: ask again, within `timeout`
            last = f"no answer: {exc!r}"
            continue
        if reply.status_code == 200 and reply.json().get("done"):
            return time.monotonic() - started
        last = reply.text
        time.sleep(0.2)
    raise AssertionError(f"no sharded reply within {timeout}s: {last}")


def _settled(s: Sharded) -> None:
    """Both rpc-servers answer, and no coordinator is loading: an idle coordinator that an
    earlier fault moved goes back once its rpc-server returns (a restart where it would have
    gone), and the test's own load starts after that one's."""
    _wait("both rpc-servers healthy",
          lambda: all(b["healthy"] or b["detail"].startswith("held by")
                      for b in s.snapshot()["backends"]))
    _wait("no coordinator loading",
          lambda: not any(c["state"] == "starting" for c in s.snapshot()["coordinators"]),
          timeout=120.0)


def _wait(what: str, check: Callable[[], Any], timeout: float = 60.0,
          explain: Callable[[], str] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g}s" + (
            f"; {explain()}" if explain else "")
        time.sleep(0.05)
    return value


def _route_state(s: Sharded, model: str) -> str:
    """What the gateway says of `model`'s coordinator, the rpc-servers and its last warnings."""
    snapshot = s.snapshot()
    backends = {b["address"]: (b["healthy"], b["detail"]) for b in snapshot["backends"]}
    return json.dumps({"coordinator": s.coordinator(model), "backends": backends,
                       "warnings": snapshot["warnings"][-6:]}, default=str)[:4000]


def _record(s: Sharded, fault: str, results: list[LoadResult], detect: float | None,
            recover: float | None, note: str = "") -> None:
    row = {"fault": fault, "node": "rpc-server", "requests": len(results),
           "complete": sum(1 for r in results if r.error is None),
           "cut_after_first_byte": sum(1 for r in results if r.error and r.chunks),
           "errors_before_first_byte": sum(1 for r in results if r.error and not r.chunks),
           "longest_s": round(max((r.seconds for r in results), default=0), 2),
           "detect_s": None if detect is None else round(detect, 2),
           "recover_s": None if recover is None else round(recover, 2), "note": note,
           "sample_error": next((r.error for r in results if r.error), None),
           "errors": [f"{r.request.tag} after {r.seconds:.1f}s ({r.chunks} chunks): {r.error}"
                      for r in results if r.error],
           "seconds": {r.request.tag: round(r.seconds, 1) for r in results}}
    s.figures.append(row)
    print(f"\nFAULT {json.dumps(row)}")


def _check(s: Sharded, results: list[LoadResult]) -> None:
    names = [s.address(h) for h in s.shards] + ["llama-server", s.model, *s.big]
    problems = check_load(results, expected=None, nodes=names, bound=BOUND)
    assert not problems, "\n".join(problems[:20])


def _restarted(s: Sharded, model: str, old_pid: int | None, on: list[str],
               fault_wall: float) -> tuple[float, float]:
    """Wait until `model` runs on a new coordinator over exactly `on`; returns seconds from the
    fault until it was started (detection) and until it was ready (recovery)."""
    coord = _wait(f"{model} restarted on {on}", lambda: (
        c if (c := s.coordinator(model)) and c["pid"] != old_pid and c["backends"] == on
        and c["state"] == "ready" else None))
    started = coord["started_at"] - fault_wall
    return started, started + coord["load_seconds"]


def _no_leaks(s: Sharded) -> None:
    """The gateway host runs the gateway and only the coordinators it reports; each rpc-server
    host runs at most one rpc-server."""
    def commands(host: Host) -> dict[int, str]:
        found = {}
        for pid in host.pids():
            try:
                found[pid] = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue  # exited while we looked
        return found

    def compared() -> tuple[set[int], set[int]]:
        running = {c["pid"] for c in s.snapshot()["coordinators"]
                   if c["state"] in ("starting", "ready")}
        return {pid for pid, name in commands(s.gateway).items() if name == "llama-server"}, \
            running

    # a coordinator being stopped (a move back to its preferred rpc-servers) leaves the report
    # before its process has exited: equal within a few seconds, or a leak
    deadline = time.monotonic() + 10
    while (found := compared())[0] != found[1] and time.monotonic() < deadline:
        time.sleep(0.2)
    on_gateway, running = found
    assert on_gateway == running, f"coordinators on the gateway host {on_gateway}, " \
                                  f"reported {running}"
    for host in s.shards:
        servers = [pid for pid, name in commands(host).items() if "rpc" in name]
        assert len(servers) <= 1, f"{host.name} runs {servers}"


STUCK = "the rpc-server stayed stuck on its dead connection and was restarted"
BACK = "the rpc-server answered probes again by itself"


def _heal(s: Sharded, host: Host) -> str:
    """Bring a faulted rpc-server host back: link up, no rate limit; its rpc-server restarted
    when it died or still serves the dead connection (it has no timeout of its own). Says
    which it was."""
    host.restore()
    host.clear_rate_limit()
    proc = s.shard_process(host)
    if proc is None:
        s.start_shard(host)
        return "the rpc-server had died"
    deadline = time.monotonic() + 2
    address = s.address(host)
    while time.monotonic() < deadline:
        backends = {b["address"]: b for b in s.snapshot()["backends"]}
        if backends[address]["healthy"]:
            return BACK
        time.sleep(0.1)
    proc.kill()  # stuck on its connection to the dead coordinator: an operator restarts it
    s.start_shard(host)
    return STUCK


def test_rpc_server_link_cut_while_generating(sharded: Sharded) -> None:
    s = sharded
    r1, r2 = s.shards
    _reply(s)
    coord = _wait("the links watched", lambda: (c if (c := s.coordinator(s.model))
                                                and c["links_watched"] >= 2 else None))
    assert coord["backends"] == [s.address(r1), s.address(r2)]
    before = set(s.snapshot()["warnings"])
    fault_wall: list[float] = []

    def cut() -> None:
        fault_wall.append(time.time())
        r1.cut()

    try:
        results, _t0 = load_during(s.url, plan_load("rpc-cut", 8, model=s.model,
                                                    max_tokens=300), cut, delay=0.5)
        _check(s, results)
        # without the link watch, llama-server would wait on the dead link for good
        detect, recover = _restarted(s, s.model, coord["pid"], [s.address(r2)], fault_wall[0])
    finally:
        note = _heal(s, r1)
    _reply(s)
    _record(s, "rpc-server link cut (no RST) while the sharded model generates", results,
            detect, recover, note=note)
    assert any(r.error for r in results), "the cut came after the load: nothing was tested"
    assert note == BACK  # `sollol rpc serve` dropped its dead client
    _names_the_rpc_server(s, before, r1)
    _no_leaks(s)


def _names_the_rpc_server(s: Sharded, before: set[str], victim: Host) -> None:
    """The gateway's warnings since `before` say which rpc-server failed."""
    new = [w for w in s.snapshot()["warnings"] if w not in before]
    assert any(s.address(victim) in w for w in new), new


def _fault_while_loading(s: Sharded, model: str, victim: Host, fault: Callable[[], None],
                         ) -> tuple[list[LoadResult], float, float, dict[str, Any]]:
    """Requests for `model` arrive, its coordinator starts loading over both rpc-servers (the
    victim's link rate-limited); when a few MB reached the victim, `fault`. Returns the
    results, seconds from the fault to the restart and to its end, and the first coordinator."""
    _settled(s)
    victim.rate_limit(SLOW_LINK)
    seen: dict[str, Any] = {}
    fault_wall: list[float] = []

    def when_loading() -> None:
        def loading() -> dict[str, Any] | None:
            c = s.coordinator(model)
            sent = (c or {}).get("upload", {}).get(s.address(victim), {}).get("bytes", 0)
            if c and c["state"] == "starting" and c["links_watched"] >= 2 and sent > 2e6:
                return c
            return None

        seen.update(_wait(f"{model} loading", loading,
                          explain=lambda: _route_state(s, model)))
        fault_wall.append(time.time())
        fault()

    results, _t0 = load_during(s.url, plan_load("load", 6, model=model, max_tokens=16),
                               when_loading, delay=0.1)
    survivor = next(h for h in s.shards if h is not victim)
    detect, recover = _restarted(s, model, seen["pid"], [s.address(survivor)], fault_wall[0])
    return results, detect, recover, seen


def test_rpc_server_killed_while_a_sharded_model_loads(sharded: Sharded) -> None:
    s = sharded
    victim = s.shards[0]
    proc = s.shard_process(victim)
    assert proc is not None
    before = set(s.snapshot()["warnings"])
    try:
        results, detect, recover, first = _fault_while_loading(s, s.big[0], victim, proc.kill)
        _check(s, results)
    finally:
        note = _heal(s, victim)
    _record(s, "rpc-server killed while a sharded model loads (tbf 20mbit link)", results,
            detect, recover, note=note)
    assert first["state"] == "starting"
    _names_the_rpc_server(s, before, victim)
    _no_leaks(s)


def test_rpc_server_link_cut_while_a_sharded_model_loads(sharded: Sharded) -> None:
    s = sharded
    victim = s.shards[1]
    before = set(s.snapshot()["warnings"])
    try:
        results, detect, recover, first = _fault_while_loading(s, s.big[1], victim, victim.cut)
        _check(s, results)
    finally:
        note = _heal(s, victim)
    _record(s, "rpc-server link cut (no RST) while a sharded model loads (tbf 20mbit link)",
            results, detect, recover, note=note)
    assert first["state"] == "starting"
    assert note == BACK  # `sollol rpc serve` dropped its dead client
    _names_the_rpc_server(s, before, victim)
    _no_leaks(s)


def test_rpc_server_killed_while_generating(sharded: Sharded) -> None:
    s = sharded
    _settled(s)
    _reply(s)  # the coordinator is up on both shards (it evicts the last test's)
    victim = s.shard_process(s.shards[0])
    assert victim is not None
    results, _t0 = load_during(s.url, plan_load("rpc-kill", 8, model=s.model, max_tokens=300),
                               victim.kill)
    _check(s, results)
    detect = max((r.seconds for r in results if r.error), default=None)
    recover = _reply(s)  # restarted on the survivor
    s.start_shard(s.shards[0])
    _record(s, "rpc-server killed while the sharded model generates", results, detect, recover)
    assert any(r.error for r in results), "the kill came after the load: nothing was tested"
    _no_leaks(s)


def test_gateway_killed_while_a_coordinator_runs(sharded: Sharded) -> None:
    s = sharded
    _reply(s)
    gateway = next(p for p in s.net.processes.processes
                   if p.name == "gw2-gateway" and p.alive())
    assert len(s.gateway.pids()) >= 2  # the gateway and its coordinator (llama-server)
    t0 = time.monotonic()
    gateway.kill()
    deadline = time.monotonic() + 30
    while s.gateway.pids():  # the coordinator dies with the gateway (parent-death signal)
        assert time.monotonic() < deadline, f"leaked on the gateway host: {s.gateway.pids()}"
        time.sleep(0.05)
    detect = time.monotonic() - t0
    s.start_gateway()
    recover = _reply(s)  # the rpc-servers are free again: a new coordinator loads
    _record(s, "gateway killed (SIGKILL) while its coordinator runs, restarted", [], detect,
            recover)
    _no_leaks(s)
