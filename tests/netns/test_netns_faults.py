"""Runs the multi-host fault suite (tests/netns/netns_faults.py: pool nodes;
tests/netns/netns_shard_faults.py: rpc-servers and coordinators) inside a network namespace of
its own with no default route, and prints what each fault did and how long detection and
recovery took.

Needs root and iproute2 (scripts/test installs it); a missing tool FAILS this test, never skips it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from sollol.testing.netns import missing_tools, run_isolated

INNER = [Path(__file__).with_name("netns_faults.py"),
         Path(__file__).with_name("netns_shard_faults.py")]


def test_faults_between_hosts_in_their_own_network_namespaces(tmp_path, capsys):
    missing = missing_tools()
    if missing:
        pytest.fail(f"multi-host fault tests need {', '.join(missing)}: "
                    "apt-get install -y iproute2 util-linux (scripts/test does this)")
    if os.geteuid() != 0:
        pytest.fail("multi-host fault tests need root (network namespaces); CI runs as root")
    report = tmp_path / "faults.json"
    env = {**os.environ, "NETNS_FAULT_REPORT": str(report)}
    started = time.monotonic()
    result = run_isolated([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                           "--basetemp", str(tmp_path / "inner"), *map(str, INNER)],
                          env=env, cwd=INNER[0].parents[2])
    took = time.monotonic() - started
    rows = json.loads(report.read_text()) if report.exists() else []
    with capsys.disabled():
        print(f"\nmulti-host faults ({took:.0f}s in their own network namespace):")
        for row in rows:
            print(f"  {row['fault']}: {row['complete']}/{row['requests']} complete, "
                  f"{row['cut_after_first_byte']} cut after the first byte, "
                  f"{row['errors_before_first_byte']} refused; detected in {row['detect_s']} s, "
                  f"recovered in {row['recover_s']} s; longest request {row['longest_s']} s")
            if row.get("note"):
                print(f"    ({row['note']})")
    assert result.returncode == 0, result.stdout[-12000:]
    assert len(rows) == sum(path.read_text().count("\ndef test_") for path in INNER)
