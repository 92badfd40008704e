"""Issue 23's acceptance test: machines joined with one `sollol join` command each, between hosts
in network namespaces (tests/netns/netns_join.py), inside a namespace of its own with no default
route, and the hostile cases (attacker host, wrong token, replay, cut links, a join flood).

Needs root and iproute2; a missing tool FAILS this test, never skips it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from sollol.testing.netns import missing_tools, run_isolated

INNER = Path(__file__).with_name("netns_join.py")

pytestmark = [pytest.mark.llamacpp, pytest.mark.slow]


def test_joined_machines_between_hosts_in_their_own_network_namespaces(tmp_path, capsys):
    missing = missing_tools()
    if missing:
        pytest.fail(f"multi-host tests need {', '.join(missing)}: "
                    "apt-get install -y iproute2 util-linux (scripts/test does this)")
    if os.geteuid() != 0:
        pytest.fail("multi-host tests need root (network namespaces); CI runs as root")
    report = tmp_path / "join.json"
    result = run_isolated([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                           "--basetemp", str(tmp_path / "inner"), str(INNER)],
                          env={**os.environ, "NETNS_JOIN_REPORT": str(report)},
                          cwd=INNER.parents[2])
    rows = json.loads(report.read_text()) if report.exists() else []
    with capsys.disabled():
        print("\njoined cluster between namespace hosts:")
        for row in rows:
            print(f"  {row}")
    assert result.returncode == 0, result.stdout[-12000:]
    tests = INNER.read_text().count("\ndef test_")
    assert f"{tests} passed" in result.stdout, result.stdout[-12000:]
