"""LAN discovery without a network: what is announced where, and the browser's bound. The
announcements between hosts are tested in network namespaces (tests/netns/netns_lan.py)."""

from __future__ import annotations

import socket

from sollol_plugins.cluster_join import lan
from zeroconf import ServiceInfo, ServiceStateChange


def test_a_loopback_bind_is_never_announced() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost", "gpu-box"):
        assert lan.lan_addresses(host) == []
    # nothing to announce: no socket is opened, nothing is sent
    assert lan.announce_gateway("127.0.0.1", 11435, "ab" * 16) is None
    assert lan.announce_worker("w1", 50053, host="127.0.0.1") is None


def test_a_specific_bind_is_announced_on_that_address_only() -> None:
    assert lan.lan_addresses("10.0.0.5") == ["10.0.0.5"]
    assert lan.lan_addresses("169.254.1.2") == []  # link-local: not a LAN address to join on
    assert all(not a.startswith("127.") for a in lan.lan_addresses("0.0.0.0"))


class _Answers:
    """What the network answered for each announced name (get_service_info's part only)."""

    def __init__(self) -> None:
        self.infos: dict[str, ServiceInfo] = {}

    def announce(self, name: str, address: str, port: int) -> str:
        full = f"{name}.{lan.WORKER_TYPE}"
        self.infos[full] = ServiceInfo(
            lan.WORKER_TYPE, full, port=port, properties={"name": name, "version": "3.1"},
            addresses=[socket.inet_aton(address)])
        return full

    def get_service_info(self, type_: str, name: str, timeout: int = 0) -> ServiceInfo | None:
        return self.infos.get(name)


def test_the_browser_keeps_a_bounded_newest_first_set() -> None:
    browser = lan.WorkerBrowser(["10.0.0.1"], limit=3)
    answers = _Answers()
    for i in range(5):
        full = answers.announce(f"w{i}", f"10.0.0.{10 + i}", 50053)
        browser._changed(answers, lan.WORKER_TYPE, full, ServiceStateChange.Added)
    assert [w.name for w in browser.workers()] == ["w2", "w3", "w4"]
    assert [w.name for w in browser.workers(exclude={"w3"})] == ["w2", "w4"]
    w4 = browser.workers()[-1]
    assert (w4.address, w4.port, w4.version) == ("10.0.0.14", 50053, "3.1")
    browser._changed(answers, lan.WORKER_TYPE, f"w2.{lan.WORKER_TYPE}",
                     ServiceStateChange.Removed)
    assert [w.name for w in browser.workers()] == ["w3", "w4"]
    # an announcement that cannot be resolved (gone, or garbage) is not listed
    browser._changed(answers, lan.WORKER_TYPE, f"ghost.{lan.WORKER_TYPE}",
                     ServiceStateChange.Added)
    assert "ghost" not in {w.name for w in browser.workers()}


def test_a_found_gateway_unpacks_as_url_and_pin() -> None:
    found = lan.FoundGateway(url="http://10.0.0.2:11435", pin="ab" * 16, version="3.1",
                             name="sollol gateway on gw._sollol._tcp.local.")
    url, pin = found
    assert (url, pin) == ("http://10.0.0.2:11435", "ab" * 16)
