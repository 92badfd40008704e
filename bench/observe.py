"""What watching the cluster costs: the dashboard's page weight, and the gateway's throughput
with metrics on vs off (and with a dashboard streaming), measured side by side in one run.

Two fast emulated Ollama nodes on loopback; three gateways over the same static route, started
the same way: metrics off, metrics on, and metrics on with a dashboard's event stream open while
wrk runs. wrk drives each in turn, alternating for several rounds so machine noise hits all
alike; the medians are compared. Besides requests/s it reads each gateway's CPU time from /proc
before and after every cell: CPU microseconds per request is what the metrics cost, and unlike
requests/s it hardly moves when other work shares the machine. It also times the recorder alone
on a stream of events. Everything it starts it stops.

    python bench/observe.py                      # defaults: 3 rounds x 8 s per cell
    python bench/observe.py --rounds 5 --duration 10 --json results.json

Target (issue 15): metrics cost the gateway at most 10% of its throughput. Results:
docs/performance.md.
"""

from __future__ import annotations

import argparse
import gzip
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_overhead import MODEL, WORKLOADS, report, run_wrk, start_emulators, wrk_script

from sollol.core.processes import ProcessGroup, free_port, wait_http

STATIC = Path(__file__).resolve().parent.parent / "sollol" / "gateway" / "static"


def serve_gateway(port: int, nodes: list[str], metrics: bool) -> None:
    """The gateway over a static route on `nodes` (the process the benchmark starts)."""
    from sollol.config import load_config
    from sollol.core.plugin_manager import get_plugin_manager
    from sollol.core.runtime import ClusterRuntime
    from sollol.gateway.server import serve
    from sollol.testing.static_route import RoutesPlugin, StaticRoute, Upstream

    route = StaticRoute("pool", [Upstream(f"node{i}", url, "ollama", (MODEL,))
                                 for i, url in enumerate(nodes)])
    pm = get_plugin_manager(load_entry_points=False)
    pm.register(RoutesPlugin([route]))
    config = load_config(overrides={"task_distribution_enabled": True,
                                    "metrics_enabled": metrics})
    serve(ClusterRuntime(config=config, pm=pm), "127.0.0.1", port, log_level="warning")


def start_gateway(group: ProcessGroup, nodes: list[str], metrics: bool) -> tuple[str, int]:
    port = free_port()
    proc = group.start(f"gateway-{port}", [
        sys.executable, __file__, "--serve-gateway", str(port), "--nodes", ",".join(nodes),
        "--metrics", "on" if metrics else "off"])
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/api/version", process=proc, timeout=60)
    return url, proc.pid


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(url: str, pid: int, path: str, script: Path, connections: int,
             seconds: float) -> dict:
    """One wrk cell, plus the gateway's CPU microseconds per request during it."""
    before = cpu_seconds(pid)
    cell = run_wrk(url, path, script, connections, seconds)
    used = cpu_seconds(pid) - before
    requests = cell["rps"] * max(1, round(seconds))
    cell["cpu_us_per_request"] = used / requests * 1e6 if requests else float("nan")
    return cell


def record_cost(metrics: bool, events: int = 200_000) -> float:
    """CPU microseconds of `ClusterRuntime.record` per finished request: the event log, the
    `sollol_request_routed` hook and (with metrics) the recorder on it. This is everything
    metrics add to a request's path, timed in CPU time, which other work on the machine
    hardly changes."""
    from sollol.config import load_config
    from sollol.core.plugin_manager import get_plugin_manager
    from sollol.core.runtime import ClusterRuntime
    from sollol.models import RouteEvent
    from sollol.observe import Recorder

    pm = get_plugin_manager(load_entry_points=False)
    cluster = ClusterRuntime(config=load_config(overrides={}), pm=pm)
    if metrics:
        pm.register(Recorder(), name="bench-recorder")
    sample = [RouteEvent(model=MODEL, endpoint="generate", api="ollama", route="pool",
                         policy="", reason="", backend=f"node{i % 2}", status=200, ok=True,
                         duration_s=0.003 + i % 7 * 1e-4, tokens=12, prompt_tokens=3,
                         ttft_s=0.001 if i % 2 else None, upstream_s=0.0025)
              for i in range(1000)]
    started = time.process_time()
    for i in range(events):
        cluster.record(sample[i % 1000])
    return (time.process_time() - started) / events * 1e6


class DashboardWatcher:
    """Holds a dashboard's event stream open (and reads it) on a thread, as a browser would."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DashboardWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with httpx.stream("GET", self.url + "/sollol/stream", timeout=30) as reply:
            for chunk in reply.iter_raw():
                self.bytes += len(chunk)
                if self._stop.is_set():
                    return


def page_weight(url: str) -> dict:
    """Bytes a browser downloads to open the dashboard: files, and the first state it reads."""
    files = {}
    for name in sorted(p.name for p in STATIC.iterdir()):
        body = (STATIC / name).read_bytes()
        files[name] = {"bytes": len(body), "gzip": len(gzip.compress(body, 9))}
    first = b""
    with httpx.stream("GET", url + "/sollol/stream", timeout=30) as reply:
        for chunk in reply.iter_raw():
            first += chunk
            if first.count(b"\n\nevent:") >= 2 and first.endswith(b"\n\n"):
                break  # overview, history and recent requests: what the page shows at once
    served = httpx.get(url + "/dashboard", headers={"accept-encoding": "gzip"}, timeout=10)
    return {"files": files, "total_bytes": sum(f["bytes"] for f in files.values()),
            "total_gzip": sum(f["gzip"] for f in files.values()),
            "first_stream_bytes": len(first),
            "html_served_gzip": served.headers.get("content-encoding") == "gzip",
            "requests_to_open": 1 + sum(1 for n in files if n != "index.html") + 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0, help="Seconds per cell.")
    parser.add_argument("--rounds", type=int, default=3, help="Alternating rounds per target.")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workload", choices=(*WORKLOADS, "all"), default="all")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument("--serve-gateway", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--nodes", help=argparse.SUPPRESS)
    parser.add_argument("--metrics", choices=("on", "off"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_gateway:
        serve_gateway(args.serve_gateway, args.nodes.split(","), args.metrics == "on")
        return
    workloads = list(WORKLOADS) if args.workload == "all" else [args.workload]
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="sollol-bench-") as name, \
            ProcessGroup(log_dir=Path(name) / "logs") as group:
        tmp = Path(name)
        nodes = start_emulators(group)
        gateways = {"metrics off": start_gateway(group, nodes, False),
                    "metrics on": start_gateway(group, nodes, True),
                    "on + dashboard": start_gateway(group, nodes, True)}
        targets = {name: url for name, (url, _pid) in gateways.items()}
        costs = {"off": min(record_cost(False) for _ in range(3)),
                 "on": min(record_cost(True) for _ in range(3))}
        results["record_us_per_request"] = costs
        print(f"recording a finished request: {costs['off']:.2f} us CPU with metrics off, "
              f"{costs['on']:.2f} us with metrics on", flush=True)
        weight = page_weight(targets["metrics on"])
        results["page_weight"] = weight
        each = ", ".join(f"{n} {f['gzip']}" for n, f in weight["files"].items())
        print(f"dashboard files: {weight['total_bytes']} bytes, {weight['total_gzip']} gzipped "
              f"({each}); "
              f"first stream read {weight['first_stream_bytes']} bytes; "
              f"{weight['requests_to_open']} requests to open", flush=True)
        for workload in workloads:
            path, body = WORKLOADS[workload]
            script = wrk_script(tmp, body)
            for url in targets.values():  # warm up connections and caches
                run_wrk(url, path, script, 8, 1)
            cells: dict[str, list[dict]] = {t: [] for t in targets}
            for _round in range(args.rounds):
                for target, (url, pid) in gateways.items():
                    if target == "on + dashboard":
                        with DashboardWatcher(url):
                            cell = measured(url, pid, path, script, args.connections,
                                            args.duration)
                    else:
                        cell = measured(url, pid, path, script, args.connections, args.duration)
                    cells[target].append(cell)
                    print(f"{workload:12} {target:15} {cell['rps']:8.0f} req/s  "
                          f"{cell['cpu_us_per_request']:6.0f} us CPU/request  "
                          f"p50 {cell['p50_ms']:.3f} ms  p99 {cell['p99_ms']:.3f} ms  "
                          f"errors {cell['errors']}", flush=True)
            summary = {t: {"rps": statistics.median(c["rps"] for c in runs),
                           "cpu_us_per_request": statistics.median(
                               c["cpu_us_per_request"] for c in runs),
                           "p50_ms": statistics.median(c["p50_ms"] for c in runs),
                           "p99_ms": statistics.median(c["p99_ms"] for c in runs),
                           "errors": sum(c["errors"] for c in runs)}
                       for t, runs in cells.items()}
            results[workload] = {"rounds": cells, "median": summary}
    checks = []
    added = results["record_us_per_request"]["on"] - results["record_us_per_request"]["off"]
    for workload in workloads:
        gateway_cpu = results[workload]["median"]["metrics off"]["cpu_us_per_request"]
        share = added / gateway_cpu
        print(f"{workload:12} metrics add {added:.2f} us of CPU to a request that costs the "
              f"gateway {gateway_cpu:.0f} us: {share:.1%}")
        checks.append((f"{workload}: the metrics' own work per request <= 10% of the "
                       "gateway's", share <= 0.1, f"{share:.1%}"))
        median = results[workload]["median"]
        base = median["metrics off"]
        for target in ("metrics on", "on + dashboard"):
            ratio = median[target]["rps"] / base["rps"]
            cpu = median[target]["cpu_us_per_request"] / base["cpu_us_per_request"]
            print(f"{workload:12} {target:15} throughput {ratio:.3f}x of metrics off, "
                  f"CPU per request {cpu:.3f}x (medians of {args.rounds}); p50 "
                  f"{median[target]['p50_ms']:.3f} vs {base['p50_ms']:.3f} ms")
            # The gateway is one CPU-bound process: its throughput is the inverse of its CPU
            # per request. That figure is the verdict; requests/s is printed beside it.
            checks.append((f"{workload}: {target} costs <= 10% of the throughput "
                           "(CPU per request <= 1/0.9 of metrics off)",
                           cpu <= 1 / 0.9 and median[target]["errors"] == 0,
                           f"CPU {cpu:.3f}x, requests/s {ratio:.1%}"))
    report(checks, results, args.json)


if __name__ == "__main__":
    main()
