"""Run inside a network namespace of its own by test_pytest_plugin_netns.py: the public
`sollol_network` fixture gives hosts that reach each other, and a cut link is a silent hang."""

from __future__ import annotations

import sys

import httpx
import pytest


def test_hosts_reach_each_other_until_the_link_is_cut(sollol_network) -> None:
    server = sollol_network.add_host("server")
    client = sollol_network.add_host("client")
    server.start("http", [sys.executable, "-m", "http.server", "8000", "--bind", server.address])
    from sollol.core.processes import wait_port

    wait_port(server.address, 8000, timeout=30)
    url = f"http://{server.address}:8000/"
    code = f"import httpx; print(httpx.get({url!r}, timeout=2).status_code)"
    probe = [sys.executable, "-c", code]
    first = client.start("probe", probe)
    assert first.popen.wait(30) == 0 and "200" in first.log_text()
    server.cut()
    with pytest.raises(httpx.TimeoutException):  # no reset: the packets just vanish
        httpx.get(f"http://{server.address}:8000/", timeout=1.0)
    server.restore()
    assert httpx.get(f"http://{server.address}:8000/", timeout=5).status_code == 200
