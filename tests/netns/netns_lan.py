"""Discovery on the LAN (plugins/cluster_join/lan.py) between hosts in network namespaces.
Runs ONLY inside `run_isolated` (tests/netns/test_lan_discovery.py starts it there): the
multicast announcements stay on the test's own bridge.

Not collected by a plain `pytest` run (the name does not start with `test_`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sollol.core.processes import wait_http
from sollol.testing.netns import Host, Network, require_isolated

AGENT = Path(__file__).with_name("lan_agent.py")
PIN = "0123456789abcdef0123456789abcdef"


def _until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _agent(host: Host, name: str, *args: str) -> Any:
    proc = host.start(name, [sys.executable, AGENT, *args])
    _until(lambda: "ready" in proc.log_text() or not proc.alive(), 30, f"{name} to start")
    assert proc.alive(), proc.log_text()
    return proc


def _python(host: Host, code: str) -> str:
    result = subprocess.run(["ip", "netns", "exec", host.namespace, sys.executable, "-c", code],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    require_isolated()
    network = Network(log_dir=tmp_path_factory.mktemp("lan"))
    try:
        network.start()
        for name in ("gw", "w1", "w2", "w3"):
            network.add_host(name)
        yield network
    finally:
        network.close()


def test_a_gateway_is_found_from_another_host(net: Network) -> None:
    gw = net.hosts["gw"]
    announcer = _agent(gw, "announce-gateway", "gateway", "11435", PIN)
    try:
        found = json.loads(_python(net.hosts["w1"], (
            "import json, attrs; from sollol_plugins.cluster_join import lan; "
            "print(json.dumps([attrs.asdict(g) for g in lan.find_gateways(2.0)]))")))
        assert [(g["url"], g["pin"]) for g in found] == [(f"http://{gw.address}:11435", PIN)]
        # what is announced: the port, the version and the CA pin; no secret, nothing else
        txt = _python(net.hosts["w2"], (
            "from sollol_plugins.cluster_join import lan; from zeroconf import Zeroconf, "
            "ServiceBrowser; import time\n"
            f"zc = Zeroconf(interfaces=lan.lan_addresses('0.0.0.0'))\n"
            f"ServiceBrowser(zc, lan.GATEWAY_TYPE, handlers=[lambda **k: None]); time.sleep(1.5)\n"
            f"info = zc.get_service_info(lan.GATEWAY_TYPE, {found[0]['name']!r})\n"
            "print(sorted(k.decode() for k in info.properties)); zc.close()"))
        assert txt.strip() == "['pin', 'version']"
    finally:
        announcer.stop()


def test_workers_announcing_show_up_at_the_gateway_and_leave(net: Network) -> None:
    listing = net.log_dir / "discovered.json"
    browser = _agent(net.hosts["gw"], "browse", "browse", str(listing))

    def seen() -> dict[str, Any]:
        rows = json.loads(listing.read_text()) if listing.exists() else []
        return {row["name"]: row for row in rows}

    try:
        w1 = _agent(net.hosts["w1"], "announce-w1", "worker", "worker-one", "50053")
        w2 = _agent(net.hosts["w2"], "announce-w2", "worker", "worker-two", "50054")
        rows = _until(lambda: len(seen()) == 2 and seen(), 15, "two workers in the list")
        assert {n: (r["address"], r["port"]) for n, r in rows.items()} == {
            "worker-one": (net.hosts["w1"].address, 50053),
            "worker-two": (net.hosts["w2"].address, 50054)}
        w1.popen.send_signal(signal.SIGTERM)  # a worker that stops says goodbye
        assert w1.popen.wait(10) == 0
        _until(lambda: set(seen()) == {"worker-two"}, 10, "worker-one to leave the list")
        w2.stop()
    finally:
        browser.stop()


def _gateway(net: Network, host: Host, name: str, **settings: str) -> tuple[Any, str, Path]:
    """A real `sollol run` on `host` (every interface), with the cluster_join plugin."""
    state = net.log_dir / f"{name}-state"
    env = {**os.environ, "SOLLOL_CONFIG": str(net.log_dir / f"{name}.toml"),
           "SOLLOL_CLUSTER_STATE_DIR": str(state), "SOLLOL_TASK_DISTRIBUTION_ENABLED": "false",
           **{f"SOLLOL_{k.upper()}": v for k, v in settings.items()}}
    # --insecure: no access keys on a test network no one else can reach
    proc = host.start(name, [sys.executable, "-m", "sollol", "run", "--host", "0.0.0.0",
                             "--port", "11435", "--grace", "1", "--insecure"], env=env)
    url = f"http://{host.address}:11435"
    wait_http(url + "/sollol/state", process=proc, timeout=60)
    return proc, url, state


def test_a_real_gateway_announces_itself_and_lists_the_workers_that_announce(
        net: Network) -> None:
    from sollol_plugins.cluster_join.ca import ca_pin

    gw = net.hosts["gw"]
    gateway, url, state = _gateway(net, gw, "gateway")
    quiet, quiet_url, _ = _gateway(net, net.hosts["w3"], "quiet-gateway",
                                   cluster_announce="false")
    worker = None
    try:
        pin = ca_pin((state / "ca.pem").read_bytes())
        found = _until(lambda: json.loads(_python(net.hosts["w1"], (
            "import json, attrs; from sollol_plugins.cluster_join import lan; "
            "print(json.dumps([attrs.asdict(g) for g in lan.find_gateways(2.0)]))"))), 20,
            "the gateway's announcement")
        # the quiet gateway (cluster_announce = false) is not among them
        assert [(g["url"], g["pin"]) for g in found] == [(url, pin)]
        worker = _agent(net.hosts["w2"], "announce-w2b", "worker", "gpu-box", "50053")

        def listed() -> list[dict[str, Any]]:
            reply = httpx.get(url + "/sollol/cluster/discovered", timeout=10, trust_env=False)
            assert reply.status_code == 200, reply.text
            body = reply.json()
            assert body["announcing"] is True
            return body["discovered"]

        rows = _until(listed, 15, "gpu-box in /sollol/cluster/discovered")
        assert [(r["name"], r["address"], r["port"]) for r in rows] == [
            ("gpu-box", net.hosts["w2"].address, 50053)]
        shown = subprocess.run([sys.executable, "-m", "sollol", "cluster", "discovered",
                                "--gateway", url], capture_output=True, text=True, timeout=60,
                               check=False, env={**os.environ, "SOLLOL_CONFIG": "/dev/null"})
        assert shown.returncode == 0, shown.stderr
        assert "gpu-box" in shown.stdout and f"{net.hosts['w2'].address}:50053" in shown.stdout
        off = httpx.get(quiet_url + "/sollol/cluster/discovered", timeout=10,
                        trust_env=False).json()
        assert off == {"announcing": False, "discovered": []}
    finally:
        if worker is not None:
            worker.stop()
        quiet.stop()
        gateway.stop()


def test_a_running_sollol_join_announces_itself_until_it_stops(net: Network) -> None:
    """`sollol join` announces the machine while it runs, joined or not: here its gateway is
    not there yet (it keeps trying), and another gateway on the LAN lists it as discovered.
    (That a stopped announcer's goodbye takes it off the list at once is shown with the same
    lan.py calls in test_workers_announcing_show_up_at_the_gateway_and_leave.)"""
    gateway, url, _ = _gateway(net, net.hosts["gw"], "gateway-2")
    w1, w2 = net.hosts["w1"], net.hosts["w2"]
    absent = "sollol-join-0123abcd." + "A" * 43 + "." + PIN
    # started first, with --no-announce: never listed, while the one started after it is
    quiet = w2.start("join-quietly", [
        sys.executable, "-m", "sollol", "join", "http://10.77.0.250:11435", "--token", absent,
        "--name", "quiet-9", "--listen", f"{w2.address}:50099", "--no-pool", "--no-announce",
        "--state-dir", str(net.log_dir / "state-quiet-9")],
        env={**os.environ, "SOLLOL_CONFIG": str(net.log_dir / "worker.toml")})
    # it tries the gateway only after the point where it would have announced itself
    _until(lambda: "cannot reach the gateway" in quiet.log_text() or not quiet.alive(), 60,
           "quiet-9 to try its gateway")
    worker = w1.start("join-elsewhere", [
        sys.executable, "-m", "sollol", "join", "http://10.77.0.250:11435", "--token", absent,
        "--name", "rack-7", "--listen", f"{w1.address}:50099", "--no-pool",
        "--state-dir", str(net.log_dir / "state-rack-7")],
        env={**os.environ, "SOLLOL_CONFIG": str(net.log_dir / "worker.toml")})

    def listed() -> list[dict[str, Any]]:
        return httpx.get(url + "/sollol/cluster/discovered", timeout=10,
                         trust_env=False).json()["discovered"]

    try:
        rows = _until(lambda: [r for r in listed() if r["name"] == "rack-7"], 60,
                      "rack-7 in the gateway's discovered list")
        assert (rows[0]["address"], rows[0]["port"]) == (w1.address, 50099)
        assert quiet.alive(), quiet.log_text()
        assert [r["name"] for r in listed()] == ["rack-7"]
        worker.popen.send_signal(signal.SIGTERM)
        assert worker.popen.wait(30) == 0
    finally:
        worker.stop()
        quiet.stop()
        gateway.stop()


def test_nothing_leaves_the_outer_namespace(net: Network) -> None:
    # the announcements go out on the hosts' eth0 only, to the bridge in the test's own outer
    # namespace: that namespace has no link but the bridge, its veths and loopback, and no
    # default route, so no packet of the test can reach a real network
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                           check=True).stdout
    names = {line.split(":")[1].strip().split("@")[0] for line in links.splitlines()}
    assert names <= {"lo", net.bridge} | {h.link for h in net.hosts.values()}, names
    routes = subprocess.run(["ip", "route", "show", "default"], capture_output=True, text=True,
                            check=True).stdout
    assert routes.strip() == ""
    for host in net.hosts.values():
        inner = subprocess.run(["ip", "-n", host.namespace, "-o", "link", "show"],
                               capture_output=True, text=True, check=True).stdout
        assert {line.split(":")[1].strip().split("@")[0] for line in inner.splitlines()} == {
            "lo", "eth0"}
