"""`sollol batch` end to end over emulated nodes: results, errors, exit codes, progress, resume
after a kill or a Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from sollol.cli import build_cli

cli = build_cli()

MODEL = "llama3.2:1b"


def _write_input(path: Path, count: int, *, bad_model_every: int = 0) -> list[str]:
    ids = []
    with path.open("w") as handle:
        for i in range(count):
            ident = f"req-{i:03d}"
            ids.append(ident)
            model = "missing" if bad_model_every and i % bad_model_every == 0 else MODEL
            if i % 3 == 0:
                line: dict[str, Any] = {"id": ident, "model": model, "prompt": f"prompt {i}"}
            elif i % 3 == 1:
                line = {"id": ident, "op": "chat", "model": model,
                        "messages": [{"role": "user", "content": f"question {i}"}]}
            else:
                line = {"id": ident, "model": model, "input": [f"text {i}"]}
            handle.write(json.dumps(line) + "\n")
    return ids


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_batch_runs_every_line_and_records_errors(tmp_path: Path, emulator) -> None:
    nodes = [emulator(models=[MODEL]) for _ in range(2)]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = _write_input(src, 12, bad_model_every=5)
    args = ["batch", str(src), "-o", str(out), *[f"--node={n.url}" for n in nodes]]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    records = _records(out)
    assert sorted(r["id"] for r in records) == ids
    by_id = {r["id"]: r for r in records}
    for index, ident in enumerate(ids):
        record = by_id[ident]
        if index % 5 == 0:
            assert not record["ok"] and record["error_type"] == "ModelNotFound"
            assert record["status"] == 404 and "missing" in record["error"]
            continue
        assert record["ok"] and record["route"] == "pool"
        assert record["backend"] in {n.address for n in nodes}
        if index % 3 == 2:
            assert record["op"] == "embed" and len(record["response"]["embeddings"]) == 1
        else:
            assert record["text"] and record["response"]["done"] is True
    assert "tok/s" in result.stderr and "12/12" in result.stderr
    assert "3 line(s) failed" in result.stderr


def test_batch_exits_zero_when_all_lines_succeed_and_rerun_skips_them(
    tmp_path: Path, emulator,
) -> None:
    node = emulator(models=[MODEL])
    src = tmp_path / "jobs.jsonl"
    _write_input(src, 5)
    runner = CliRunner()
    first = runner.invoke(cli, ["batch", str(src), f"--node={node.url}", "--concurrency", "2"])
    assert first.exit_code == 0, first.output
    out = tmp_path / "jobs.out.jsonl"  # the default output name
    assert len(_records(out)) == 5 and "concurrency 2" in first.stderr
    again = runner.invoke(cli, ["batch", str(src), f"--node={node.url}"])
    assert again.exit_code == 0 and "resuming: 5 of 5" in again.stderr
    assert len(_records(out)) == 5
    requests = node.stats()["requests"]
    assert sum(requests.get(p, 0) for p in ("/api/generate", "/api/chat", "/api/embed")) == 5


def test_retry_failed_reruns_only_the_failures(tmp_path: Path, emulator) -> None:
    node = emulator(models=[MODEL])
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = _write_input(src, 6)
    node.set_faults(error_status=500, error_count=2)
    runner = CliRunner()
    args = ["batch", str(src), "-o", str(out), f"--node={node.url}", "--concurrency", "1",
            "--no-progress"]
    first = runner.invoke(cli, [*args, "--plugin", "ollama_pool"])
    assert first.exit_code == 1
    assert sum(not r["ok"] for r in _records(out)) == 2
    assert "tok/s" not in first.stderr
    second = runner.invoke(cli, [*args, "--retry-failed"])
    assert second.exit_code == 0, second.output
    records = _records(out)
    assert sorted(r["id"] for r in records) == ids and all(r["ok"] for r in records)


def test_bad_input_is_a_usage_error_and_runs_nothing(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a", "model": "m", "prompt": "x"}\n{"id": "b"}\nnot json\n')
    result = CliRunner().invoke(cli, ["batch", str(src), "--node=127.0.0.1:9"])
    assert result.exit_code == 2
    assert "2 bad input line(s)" in result.output and "line 3: not valid JSON" in result.output
    assert not (tmp_path / "in.out.jsonl").exists()
    same = CliRunner().invoke(cli, ["batch", str(src), "-o", str(src)])
    assert same.exit_code == 2 and "must not be the input" in same.output
    unknown = CliRunner().invoke(cli, ["batch", str(tmp_path / "in.jsonl"), "--plugin", "nope"])
    assert unknown.exit_code == 2


def _check_complete(out: Path, ids: list[str]) -> None:
    records = _records(out)
    counts = Counter(r["id"] for r in records)
    assert not [i for i, n in counts.items() if n > 1], "duplicate ids"
    assert sorted(counts) == ids, "missing ids"
    assert all(r["ok"] for r in records)


def test_resume_after_the_process_is_killed(tmp_path: Path, emulator, sollol_process,
                                            wait_for_lines) -> None:
    nodes = [emulator(models=[MODEL], tokens_per_second=40, response_tokens=8) for _ in range(2)]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = _write_input(src, 40)
    args = ["batch", src, "-o", out, *[f"--node={n.url}" for n in nodes], "--concurrency", "2"]
    proc = sollol_process(*args)
    done = wait_for_lines(out, 6, proc)
    proc.kill()  # SIGKILL: no chance to clean up or finish a line
    assert done < len(ids), "the batch finished before it could be killed"
    partial = {r["id"] for r in _records(out)}
    rerun = sollol_process(*args)
    assert rerun.popen.wait(120) == 0, rerun.log_text()
    assert f"resuming: {len(partial)} of 40" in rerun.log_text()
    _check_complete(out, ids)


def test_ctrl_c_stops_cleanly_and_resumes(tmp_path: Path, emulator, sollol_process,
                                          wait_for_lines) -> None:
    node = emulator(models=[MODEL], tokens_per_second=20, response_tokens=10)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = _write_input(src, 20)
    args = ["batch", src, "-o", out, f"--node={node.url}", "--concurrency", "2"]
    proc = sollol_process(*args)
    wait_for_lines(out, 2, proc)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.popen.wait(60) == 130, proc.log_text()
    assert "interrupted" in proc.log_text()
    assert out.read_bytes().endswith(b"\n")  # nothing half-written
    assert len(_records(out)) < len(ids)
    rerun = sollol_process(*args)
    assert rerun.popen.wait(120) == 0, rerun.log_text()
    _check_complete(out, ids)
