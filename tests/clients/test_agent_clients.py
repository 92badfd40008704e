"""Claude Code (`claude -p`) and the Codex CLI (`codex exec`, also `--oss`) against the gateway,
in a network namespace with loopback alone (agents_inner.py holds the tests; this runs them)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from clients_support import npm_package

from sollol.testing.netns import missing_tools, run_isolated

pytestmark = pytest.mark.llamacpp
INNER = Path(__file__).with_name("agents_inner.py")


def test_coding_agents_in_their_own_network_namespace(tmp_path: Path, capsys) -> None:
    npm_package("@anthropic-ai/claude-code")
    npm_package("@openai/codex")
    missing = missing_tools()
    if missing:
        pytest.fail(f"the agent tests need {', '.join(missing)}: apt-get install -y iproute2 "
                    "util-linux (scripts/test does this)")
    if os.geteuid() != 0:
        pytest.fail("the agent tests need root (a network namespace keeps the agents' "
                    "telemetry on this machine); CI runs as root")
    report = tmp_path / "agents.jsonl"
    env = {**os.environ, "CLIENTS_AGENT_REPORT": str(report)}
    started = time.monotonic()
    result = run_isolated([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--basetemp", str(tmp_path / "inner"), str(INNER)],
                          env=env, cwd=INNER.parents[2], timeout=1200)
    rows = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    with capsys.disabled():
        print(f"\ncoding agents ({time.monotonic() - started:.0f}s, network namespace):")
        for row in rows:
            print(f"  {row['client']} {row['version']}: exit {row['exit']}; "
                  f"requests {row['requests']}; gateway {row['gateway']}")
    assert result.returncode == 0, result.stdout[-12000:]
    assert {row["client"] for row in rows} == {"claude-code", "codex", "codex --oss"}
