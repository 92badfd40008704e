"""bench/batch.py still runs and reports sane numbers (a small run; the real one is 100 tasks)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "batch.py"


def test_batch_benchmark_small_run(tmp_path: Path, processes) -> None:
    out = tmp_path / "bench.json"
    proc = processes.start("bench-batch", [sys.executable, BENCH, "--tasks", "12",
                                           "--skip-1x", "--json", out])
    assert proc.popen.wait(300) == 0, proc.log_text()
    data = json.loads(out.read_text())
    assert data["tasks"] == 12 and data["ideal_s"] > 0
    library, cli = data["runs"]["library"], data["runs"]["sollol batch (process, incl. start-up)"]
    assert library["ok"] == cli["ok"] == 12
    assert library["capacity"] == 8 and library["concurrency"] == 12  # 2x 8, capped at 12 tasks
    assert library["wall_s"] >= data["ideal_s"] * 0.9  # no faster than physics allows
    assert sum(library["tasks_per_node"]) == 12
    assert "| library |" in proc.log_text()
