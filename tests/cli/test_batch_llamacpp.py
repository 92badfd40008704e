"""`sollol batch` over a real llama-server pool node: kill it mid-run, rerun, nothing lost."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.llamacpp


def test_batch_resumes_after_a_kill_over_llama_server(tmp_path: Path, llama_server, tiny_model,
                                                      sollol_process, wait_for_lines) -> None:
    url, _proc = llama_server(tiny_model, "-c", "2048", "--parallel", "2", "--alias", "tiny")
    node = "openai://" + url.removeprefix("http://")
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = [f"n{i}" for i in range(60)]
    with src.open("w") as handle:
        for i, ident in enumerate(ids):
            line = ({"id": ident, "model": "tiny", "prompt": f"tale {i}"} if i % 2 else
                    {"id": ident, "model": "tiny",
                     "messages": [{"role": "user", "content": f"question {i}"}]})
            line["options"] = {"num_predict": 256, "temperature": 0}
            handle.write(json.dumps(line) + "\n")
    args = ["batch", src, "-o", out, f"--node={node}", "--concurrency", "1"]
    proc = sollol_process(*args)
    wait_for_lines(out, 3, proc)
    proc.kill()
    partial = out.read_bytes().count(b"\n")
    assert partial < len(ids), "the batch finished before it could be killed"
    rerun = sollol_process(*args)
    assert rerun.popen.wait(300) == 0, rerun.log_text()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    counts = Counter(r["id"] for r in records)
    assert max(counts.values()) == 1 and sorted(counts) == sorted(ids)
    assert all(r["ok"] and r["backend"] == url.removeprefix("http://") for r in records)
    assert all(r["response"]["eval_count"] >= 1 for r in records)
