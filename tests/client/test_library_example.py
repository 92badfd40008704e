"""The multi-agent example in docs/library.md runs as written against emulated nodes."""

from __future__ import annotations

import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "multi_agent.py"
MODEL = "llama3.2:1b"


def test_multi_agent_example_runs_roles_in_parallel_then_synthesizes(emulator, processes) -> None:
    nodes = [emulator(models=[MODEL], tokens_per_second=40, response_tokens=20)
             for _ in range(2)]
    args = [sys.executable, str(EXAMPLE), "Should we cache the catalogue?", "--model", MODEL,
            *[f"--node={n.url}" for n in nodes]]
    proc = processes.start("multi-agent", args)
    assert proc.popen.wait(120) == 0, proc.log_text()
    output = proc.log_text()
    for role in ("architect", "skeptic", "operator", "user-advocate", "synthesis"):
        assert f"## {role} (via 127.0.0.1:" in output, output
    assert output.index("## user-advocate") < output.index("## synthesis")
    stats = [n.stats() for n in nodes]
    assert sum(s["requests"].get("/api/chat", 0) for s in stats) == 5
    # The four roles overlapped: at least two ran at once somewhere.
    assert sum(s["max_in_flight"] for s in stats) >= 2


def test_multi_agent_example_reports_a_missing_model(emulator, processes) -> None:
    node = emulator(models=[MODEL])
    proc = processes.start("multi-agent-missing", [
        sys.executable, str(EXAMPLE), "q", "--model", "absent", f"--node={node.url}"])
    assert proc.popen.wait(120) == 1
    assert "FAILED: model 'absent' not found" in proc.log_text()
    assert "nothing to synthesize" in proc.log_text()
