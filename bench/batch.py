"""Fan-out benchmark: 100 agent tasks over four emulated nodes, wall time against the ideal.

Four emulated Ollama nodes (separate processes) with different speeds and two slots each; 100
chat tasks of seeded random lengths. The ideal is total work / total capacity: the tokens to
generate divided by the tokens per second all slots of all nodes produce together. Measured:

- `library`: `sollol.Cluster.gather()` in this process (the cluster is started before timing),
  at the default concurrency (2x capacity), and again at concurrency = capacity for comparison;
- `sollol batch`: the CLI end to end, as a fresh process (start-up and plugin loading included).

    python bench/batch.py                       # 100 tasks
    python bench/batch.py --tasks 20 --json out.json
Everything it starts it stops. Results: docs/performance.md ("Batch and fan-out").
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sollol
from sollol.core.processes import ProcessGroup, free_port, wait_http

MODEL = "bench:latest"
NODE_SPEEDS = (40.0, 40.0, 20.0, 20.0)
"""Tokens per second of each node, per request (a node serves `SLOTS` requests at once)."""
SLOTS = 2
MIN_TOKENS, MAX_TOKENS = 8, 48


def start_nodes(group: ProcessGroup) -> list[str]:
    urls = []
    for index, speed in enumerate(NODE_SPEEDS):
        port = free_port()
        proc = group.start(f"emulator-{index}", [
            sys.executable, "-m", "sollol.testing.emulator", "--port", str(port),
            "--model", MODEL, "--tokens-per-second", str(speed), "--parallel", str(SLOTS),
            "--response-tokens", str(MAX_TOKENS)])
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/api/version", process=proc, timeout=60)
        urls.append(url)
    return urls


def make_tasks(count: int, seed: int) -> list[sollol.Task]:
    rng = random.Random(seed)
    return [sollol.Task.chat(MODEL, f"agent {i}: review part {i} of the plan", id=f"agent-{i}",
                             options={"num_predict": rng.randint(MIN_TOKENS, MAX_TOKENS)})
            for i in range(count)]


def ideal_seconds(tasks: list[sollol.Task]) -> tuple[float, float]:
    """(total work / total capacity, that bound raised to the longest task on the fastest node)."""
    tokens = sum(t.fields["options"]["num_predict"] for t in tasks)
    capacity = SLOTS * sum(NODE_SPEEDS)
    longest = max(t.fields["options"]["num_predict"] for t in tasks) / max(NODE_SPEEDS)
    return tokens / capacity, max(tokens / capacity, longest)


def run_library(nodes: list[str], tasks: list[sollol.Task],
                concurrency: int | None = None) -> dict[str, Any]:
    with sollol.Cluster(nodes=nodes, plugins=["ollama_pool"],
                        pool_node_concurrency=SLOTS) as cluster:
        capacity = cluster.capacity(tasks)
        run = cluster.fan_out(tasks, concurrency=concurrency)
        started = time.perf_counter()
        results = run.wait()
        wall = time.perf_counter() - started
    per_node: dict[str, int] = {}
    for result in results:
        if result.ok:
            per_node[result.response.backend] = per_node.get(result.response.backend, 0) + 1
    return {"wall_s": wall, "capacity": capacity, "concurrency": run.concurrency,
            "ok": sum(r.ok for r in results), "failed": sum(not r.ok for r in results),
            "tokens": sum(r.response.tokens for r in results if r.ok),
            "tasks_per_node": [per_node.get(url.removeprefix("http://"), 0) for url in nodes]}


def run_cli(nodes: list[str], tasks: list[sollol.Task], tmp: Path) -> dict[str, Any]:
    src, out = tmp / "tasks.jsonl", tmp / "results.jsonl"
    src.write_text("".join(json.dumps({"id": t.id, "op": t.op, "model": t.model, **t.fields})
                           + "\n" for t in tasks))
    config = tmp / "sollol.toml"
    config.write_text(f"pool_node_concurrency = {SLOTS}\n")
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "sollol", "batch", str(src), "-o", str(out), "--no-progress",
         "--plugin", "ollama_pool", "--config", str(config), *[f"--node={n}" for n in nodes]],
        capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"sollol batch failed ({done.returncode}):\n{done.stderr}")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    used = re.search(r"at concurrency (\d+)", done.stderr)
    return {"wall_s": wall, "concurrency": int(used.group(1)) if used else None,
            "ok": sum(r["ok"] for r in records),
            "failed": sum(not r["ok"] for r in records)}


def report(data: dict[str, Any]) -> str:
    ideal, bound = data["ideal_s"], data["bound_s"]
    lines = [
        f"### Batch fan-out: {data['tasks']} tasks over {len(NODE_SPEEDS)} emulated nodes",
        "",
        f"Nodes: {', '.join(f'{s:g}' for s in NODE_SPEEDS)} tok/s per request, {SLOTS} slots "
        f"each (capacity {SLOTS * sum(NODE_SPEEDS):g} tok/s); {data['tokens']} tokens in all "
        f"({MIN_TOKENS}-{MAX_TOKENS} per task, seed {data['seed']}).",
        "",
        "| run | wall | ideal (work / capacity) | wall / ideal | concurrency | failed |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in data["runs"].items():
        lines.append(f"| {name} | {row['wall_s']:.2f} s | {ideal:.2f} s | "
                     f"{row['wall_s'] / ideal:.2f}x | {row.get('concurrency', '-')} | "
                     f"{row['failed']} |")
    lines += ["", f"Lower bound including the longest task on the fastest node: {bound:.2f} s. "
              "Tasks per node: " + "; ".join(
                  f"{name}: {row['tasks_per_node']}" for name, row in data["runs"].items()
                  if "tasks_per_node" in row) + "."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--concurrency", type=int,
                        help="fan-out concurrency (default: the pool's capacity)")
    parser.add_argument("--skip-cli", action="store_true", help="no `sollol batch` run")
    parser.add_argument("--skip-1x", action="store_true",
                        help="no library run at concurrency = capacity (the comparison)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    tasks = make_tasks(args.tasks, args.seed)
    ideal, bound = ideal_seconds(tasks)
    with tempfile.TemporaryDirectory(prefix="sollol-bench-batch-") as tmp, \
            ProcessGroup(log_dir=Path(tmp) / "logs") as group:
        nodes = start_nodes(group)
        runs = {"library": run_library(nodes, tasks, args.concurrency)}
        if args.concurrency is None and not args.skip_1x:
            capacity = runs["library"]["capacity"]
            runs["library, concurrency = capacity (1x)"] = run_library(nodes, tasks, capacity)
        if not args.skip_cli:
            runs["sollol batch (process, incl. start-up)"] = run_cli(nodes, tasks, Path(tmp))
    data = {"tasks": len(tasks), "seed": args.seed, "ideal_s": ideal, "bound_s": bound,
            "tokens": sum(t.fields["options"]["num_predict"] for t in tasks), "runs": runs}
    print(report(data))
    if args.json:
        args.json.write_text(json.dumps(data, indent=2))
    return 0 if all(r["failed"] == 0 for r in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
