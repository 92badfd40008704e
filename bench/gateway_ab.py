"""Two builds of the gateway side by side: throughput through the pool route, runs interleaved.

Starts two emulated nodes, then `sollol run` (pool route) twice over them: once from this
checkout, once with `--pythonpath` pointing at another checkout's packages (a folder holding
`sollol` and `sollol_plugins`, e.g. symlinks into `git worktree add /tmp/old main`). wrk drives
each in turn, alternating which goes first, so a shared machine's changing load falls on both.

    python bench/gateway_ab.py --pythonpath /tmp/old/pp --rounds 3 --duration 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from gateway_overhead import WORKLOADS, run_wrk, start_emulators, wrk_script

from sollol.core.processes import ProcessGroup, free_port, wait_http


def start_pool_gateway(group: ProcessGroup, tmp: Path, nodes: list[str], name: str,
                       env: dict[str, str]) -> str:
    port = free_port()
    config = tmp / f"{name}.toml"
    listed = ", ".join(f'"{n}"' for n in nodes)
    config.write_text(f'plugins = ["ollama_pool"]\nollama_nodes = [{listed}]\n'
                      "pool_node_concurrency = 64\n")
    proc = group.start(name, [sys.executable, "-m", "sollol", "run", "--port", str(port),
                              "--config", str(config)], env={**os.environ, **env})
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/", process=proc, timeout=60)
    return url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pythonpath", required=True, help="the other build's packages")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, ProcessGroup(Path(folder)) as group:
        tmp = Path(folder)
        nodes = start_emulators(group)
        urls = {"other": start_pool_gateway(group, tmp, nodes, "other",
                                            {"PYTHONPATH": args.pythonpath}),
                "this": start_pool_gateway(group, tmp, nodes, "this", {})}
        runs: dict[str, list[float]] = {}
        for workload, (path, body) in WORKLOADS.items():
            script = wrk_script(tmp, body)
            for url in urls.values():
                run_wrk(url, path, script, 32, 2)  # warm-up
            for connections in (1, 32):
                for turn in range(args.rounds):
                    order = ("other", "this") if turn % 2 == 0 else ("this", "other")
                    for name in order:
                        result = run_wrk(urls[name], path, script, connections, args.duration)
                        runs.setdefault(f"{workload} c={connections} {name}", []).append(
                            result["rps"])
    for key, values in runs.items():
        print(f"{key:26s} median {statistics.median(values):7.0f} req/s  "
              f"runs {[round(v) for v in values]}")
    for workload in WORKLOADS:
        for connections in (1, 32):
            this = statistics.median(runs[f"{workload} c={connections} this"])
            other = statistics.median(runs[f"{workload} c={connections} other"])
            print(f"{workload} c={connections}: this build {100 * (this / other - 1):+.1f}%")


if __name__ == "__main__":
    main()
