"""Runs the LAN discovery tests (tests/netns/netns_lan.py: mDNS/DNS-SD between hosts) inside a
network namespace of its own with no default route, so no announcement reaches a real network.

Needs root and iproute2; a missing tool FAILS this test, never skips it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from sollol.testing.netns import missing_tools, run_isolated

INNER = Path(__file__).with_name("netns_lan.py")


def test_lan_discovery_between_hosts_in_their_own_network_namespaces(tmp_path):
    missing = missing_tools()
    if missing:
        pytest.fail(f"multi-host tests need {', '.join(missing)}: "
                    "apt-get install -y iproute2 util-linux (scripts/test does this)")
    if os.geteuid() != 0:
        pytest.fail("multi-host tests need root (network namespaces); CI runs as root")
    result = run_isolated([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--basetemp", str(tmp_path / "inner"), str(INNER)],
                          cwd=INNER.parents[2])
    assert result.returncode == 0, result.stdout[-12000:]
    tests = INNER.read_text().count("\ndef test_")
    assert f"{tests} passed" in result.stdout, result.stdout[-12000:]
