"""What watching the cluster costs: the dashboard's page weight, and the gateway's throughput
with metrics on vs off (and with a dashboard streaming), measured side by side in one run.

Two fast emulated Ollama nodes on loopback; three gateways over the same static route, started
the same way: metrics off, metrics on, and metrics on with a dashboard's event stream open while
wrk runs. wrk drives each in turn, alternating for several rounds so machine noise hits all
alike; the medians are compared. Everything it starts it stops.

    python bench/observe.py                      # defaults: 3 rounds x 8 s per cell
    python bench/observe.py --rounds 5 --duration 10 --json results.json

Target (issue 15): metrics cost the gateway at most 10% of its throughput. Results:
docs/performance.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import threading
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_overhead import MODEL, WORKLOADS, run_wrk, start_emulators, wrk_script

from sollol.processes import ProcessGroup, free_port, wait_http

STATIC = Path(__file__).resolve().parent.parent / "sollol" / "gateway" / "static"


def serve_gateway(port: int, nodes: list[str], metrics: bool) -> None:
    """The gateway over a static route on `nodes` (the process the benchmark starts)."""
    from sollol.cluster import Cluster
    from sollol.config import load_config
    from sollol.gateway.server import serve
    from sollol.plugins import get_plugin_manager
    from sollol.testing.static_route import RoutesPlugin, StaticRoute, Upstream

    route = StaticRoute("pool", [Upstream(f"node{i}", url, "ollama", (MODEL,))
                                 for i, url in enumerate(nodes)])
    pm = get_plugin_manager(load_entry_points=False)
    pm.register(RoutesPlugin([route]))
    config = load_config(overrides={"task_distribution_enabled": True,
                                    "metrics_enabled": metrics})
    serve(Cluster(config=config, pm=pm), "127.0.0.1", port, log_level="warning")


def start_gateway(group: ProcessGroup, nodes: list[str], metrics: bool) -> str:
    port = free_port()
    proc = group.start(f"gateway-{port}", [
        sys.executable, __file__, "--serve-gateway", str(port), "--nodes", ",".join(nodes),
        "--metrics", "on" if metrics else "off"])
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/api/version", process=proc, timeout=60)
    return url


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
        targets = {"metrics off": start_gateway(group, nodes, False),
                   "metrics on": start_gateway(group, nodes, True),
                   "on + dashboard": start_gateway(group, nodes, True)}
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
                for target, url in targets.items():
                    if target == "on + dashboard":
                        with DashboardWatcher(url):
                            cell = run_wrk(url, path, script, args.connections, args.duration)
                    else:
                        cell = run_wrk(url, path, script, args.connections, args.duration)
                    cells[target].append(cell)
                    print(f"{workload:12} {target:15} {cell['rps']:8.0f} req/s  "
                          f"p50 {cell['p50_ms']:.3f} ms  p99 {cell['p99_ms']:.3f} ms  "
                          f"errors {cell['errors']}", flush=True)
            summary = {t: {"rps": statistics.median(c["rps"] for c in runs),
                           "p50_ms": statistics.median(c["p50_ms"] for c in runs),
                           "p99_ms": statistics.median(c["p99_ms"] for c in runs),
                           "errors": sum(c["errors"] for c in runs)}
                       for t, runs in cells.items()}
            results[workload] = {"rounds": cells, "median": summary}
    checks = []
    for workload in workloads:
        median = results[workload]["median"]
        base = median["metrics off"]["rps"]
        for target in ("metrics on", "on + dashboard"):
            ratio = median[target]["rps"] / base
            print(f"{workload:12} {target:15} throughput {ratio:.3f}x of metrics off "
                  f"(median of {args.rounds}); p50 {median[target]['p50_ms']:.3f} vs "
                  f"{median['metrics off']['p50_ms']:.3f} ms")
            checks.append((f"{workload}: {target} keeps >= 90% of the throughput",
                           ratio >= 0.9 and median[target]["errors"] == 0, f"{ratio:.1%}"))
    for label, ok, value in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {label}: {value}")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "checks": [
            {"check": c, "ok": ok, "value": v} for c, ok, v in checks]}, indent=2))


if __name__ == "__main__":
    main()
