"""Memory and throughput of `sollol run` over a long keep-alive run: does RSS stay bounded?

Two emulated nodes, then `sollol run` (pool route) from this checkout and, with `--pythonpath`,
from another one (a folder holding `sollol` and `sollol_plugins`). wrk drives each in turn with
keep-alive `/api/generate` requests at 32 connections, in slices of `--slice` seconds,
alternating which goes first, until each gateway has served `--requests`; after every slice the
gateway's RSS is read from /proc/<pid>/status. Everything it starts it stops.

    python bench/gc_memory.py --pythonpath /tmp/old/pp --requests 430000

Issue 27 (finding 12): the GC tuning (`gc.freeze()`, thresholds 50,000/50/100) let RSS grow
from 63 to 151 MiB over 430,000 requests. Results: docs/performance.md.
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
from sollol.testing.gauges import rss_bytes


def rss_mib(pid: int) -> float:
    return rss_bytes(pid) / 2**20


def start(group: ProcessGroup, tmp: Path, nodes: list[str], name: str,
          env: dict[str, str]) -> tuple[str, int]:
    port = free_port()
    config = tmp / f"{name}.toml"
    listed = ", ".join(f'"{n}"' for n in nodes)
    config.write_text(f'plugins = ["ollama_pool"]\nollama_nodes = [{listed}]\n'
                      "pool_node_concurrency = 64\n")
    proc = group.start(name, [sys.executable, "-m", "sollol", "run", "--port", str(port),
                              "--config", str(config)], env={**os.environ, **env})
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/", process=proc, timeout=60)
    return url, proc.pid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pythonpath", help="the other build's packages (compared side by side)")
    parser.add_argument("--requests", type=int, default=430_000, help="per gateway")
    parser.add_argument("--slice", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME:VAR=VALUE, this checkout with an environment variable set")
    args = parser.parse_args()
    path, body = WORKLOADS["generate"]
    with tempfile.TemporaryDirectory() as folder, ProcessGroup(Path(folder)) as group:
        tmp = Path(folder)
        nodes = start_emulators(group)
        builds = {"this": {}} | ({"other": {"PYTHONPATH": args.pythonpath}}
                                 if args.pythonpath else {})
        for variant in args.variant:
            name, _, assignment = variant.partition(":")
            key, _, value = assignment.partition("=")
            builds[name] = {key: value}
        targets = {name: start(group, tmp, nodes, name, env) for name, env in builds.items()}
        script = wrk_script(tmp, body)
        served = dict.fromkeys(targets, 0.0)
        rates: dict[str, list[float]] = {name: [] for name in targets}
        first = {name: rss_mib(pid) for name, (_, pid) in targets.items()}
        print("start: " + ", ".join(f"{n} {v:.1f} MiB" for n, v in first.items()))
        turn = 0
        while min(served.values()) < args.requests:
            order = list(targets) if turn % 2 == 0 else list(reversed(targets))
            for name in order:
                url, pid = targets[name]
                result = run_wrk(url, path, script, args.connections, args.slice)
                served[name] += result["rps"] * round(args.slice)
                rates[name].append(result["rps"])
                print(f"{name:5s} {served[name]:9.0f} requests  {result['rps']:7.0f} req/s  "
                      f"RSS {rss_mib(pid):6.1f} MiB  errors {result['errors']}", flush=True)
            turn += 1
        for name, (_, pid) in targets.items():
            print(f"{name}: median {statistics.median(rates[name]):.0f} req/s over "
                  f"{served[name]:.0f} requests; RSS {first[name]:.1f} -> {rss_mib(pid):.1f} MiB")


if __name__ == "__main__":
    main()
