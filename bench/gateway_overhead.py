"""Gateway overhead: direct vs nginx `least_conn` vs the SOLLOL gateway, in the same run.

Two fast emulated Ollama nodes on loopback; wrk drives each target with the same request at 1
and 32 connections. Everything it starts (emulators, nginx, the gateway) it stops.

    python bench/gateway_overhead.py                  # defaults: 10 s per cell
    python bench/gateway_overhead.py --duration 5 --json results.json
    python bench/gateway_overhead.py --route both     # also through the ollama_pool plugin
    python bench/gateway_overhead.py --keys           # also the gateway requiring an access key

Targets (issue 3): p50 added latency <= 0.5 ms at 1 connection; at 32 connections throughput
>= 30% of nginx's and p99 <= 2.5x nginx's p99. Results: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from sollol.core.processes import ProcessGroup, free_port, wait_http

MODEL = "bench:latest"
WORKLOADS = {
    "generate": ("/api/generate", {"model": MODEL, "prompt": "hi", "stream": False}),
    "chat-stream": ("/api/chat", {"model": MODEL, "stream": True,
                                  "messages": [{"role": "user", "content": "hi"}]}),
}
NGINX_CONF = """
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
    upstream nodes {{ least_conn; {servers} keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://nodes;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
BENCH_KEY = "sollol-bench-key-0123456789abcdef"


def serve_gateway(port: int, nodes: list[str], key: str | None = None) -> None:
    """Run the gateway over a static route on `nodes` (the process the benchmark starts);
    with `key`, the gateway requires it (every request then passes the key check)."""
    from sollol.config import load_config
    from sollol.core.plugin_manager import get_plugin_manager
    from sollol.core.runtime import ClusterRuntime
    from sollol.gateway.server import serve
    from sollol.testing.static_route import RoutesPlugin, StaticRoute, Upstream

    route = StaticRoute("pool", [Upstream(f"node{i}", url, "ollama", (MODEL,))
                                 for i, url in enumerate(nodes)])
    pm = get_plugin_manager(load_entry_points=False)
    pm.register(RoutesPlugin([route]))
    keys = {"api_keys": [key]} if key else {}
    config = load_config(overrides={"task_distribution_enabled": True, **keys})
    serve(ClusterRuntime(config=config, pm=pm), "127.0.0.1", port, log_level="warning")


def guard_cost(rounds: int = 200_000) -> dict[str, float]:
    """Microseconds the gateway's Host/Origin/key checks take per request, measured in process
    (the HTTP figures on a shared machine are too noisy to show a cost this small)."""
    import timeit

    from sollol.config import load_config
    from sollol.gateway.guard import Guard

    headers = [(b"host", b"127.0.0.1:11435"), (b"user-agent", b"wrk"),
               (b"content-type", b"application/json"), (b"content-length", b"60")]
    keyed = [*headers, (b"authorization", b"Bearer " + BENCH_KEY.encode())]
    browser = [*headers, (b"origin", b"http://localhost:3000")]
    open_guard = Guard(load_config(), "127.0.0.1")
    key_guard = Guard(load_config(overrides={"api_keys": [BENCH_KEY]}), "127.0.0.1")
    cases = {"no keys": (open_guard, headers), "no keys, a browser Origin": (open_guard, browser),
             "a key required": (key_guard, keyed)}
    return {name: min(timeit.repeat(lambda g=g, h=h: g.admit("/api/generate", "POST", h),
                                     number=rounds, repeat=3)) / rounds * 1e6
            for name, (g, h) in cases.items()}


def start_emulators(group: ProcessGroup) -> list[str]:
    urls = []
    for index in range(2):
        port = free_port()
        proc = group.start(f"emulator-{index}", [
            sys.executable, "-m", "sollol.testing.emulator", "--port", str(port), "--model",
            MODEL, "--parallel", "0", "--response-tokens", "12"])
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/api/version", process=proc, timeout=60)
        urls.append(url)
    return urls


def start_nginx(group: ProcessGroup, tmp: Path, nodes: list[str]) -> str:
    port = free_port()
    servers = " ".join(f"server {url.removeprefix('http://')};" for url in nodes)
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, servers=servers, port=port))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = group.start("nginx", [nginx, "-p", str(tmp), "-e", str(tmp / "nginx-error.log"),
                                 "-c", str(conf)])
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/api/version", process=proc, timeout=30)
    return url


def start_gateway(group: ProcessGroup, tmp: Path, nodes: list[str], route: str) -> str:
    port = free_port()
    name = {"static": "gateway", "keys": "gateway-keys"}.get(route, "gateway-pool")
    if route in ("static", "keys"):
        args = [sys.executable, __file__, "--serve-gateway", str(port), "--nodes", ",".join(nodes)]
        if route == "keys":
            args += ["--key", BENCH_KEY]
    else:
        config = tmp / f"sollol-{port}.toml"
        node_list = ", ".join(f'"{n}"' for n in nodes)
        # The emulated nodes serve any number of requests at once: let the pool send them all.
        config.write_text(f'plugins = ["ollama_pool"]\nollama_nodes = [{node_list}]\n'
                          "pool_node_concurrency = 64\n")
        args = [sys.executable, "-m", "sollol", "run", "--port", str(port), "--config",
                str(config)]
    proc = group.start(name, args)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/", process=proc, timeout=60)  # `GET /` needs no key
    return url


def run_wrk(url: str, path: str, script: Path, connections: int, seconds: float) -> dict:
    threads = min(2, connections)
    duration = f"-d{max(1, round(seconds))}s"  # wrk takes whole seconds
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", duration, "--latency", "-s", str(script),
         url + path], capture_output=True, text=True, check=True, timeout=seconds + 60,
    ).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for pct in ("50", "90", "99"):
        value, unit = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        result[f"p{pct}_ms"] = float(value) * _UNITS[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                        out)
    result["errors"] = ((int(errors.group(1)) if errors else 0)
                        + (sum(int(n) for n in sockets.groups()) if sockets else 0))
    return result


def wrk_script(tmp: Path, body: dict, key: str | None = None) -> Path:
    script = tmp / f"request-{abs(hash(json.dumps(body)))}{'-key' if key else ''}.lua"
    auth = f'wrk.headers["Authorization"] = "Bearer {key}"\n' if key else ""
    script.write_text('wrk.method = "POST"\n'
                      f"wrk.body = {json.dumps(json.dumps(body))}\n"
                      'wrk.headers["Content-Type"] = "application/json"\n' + auth)
    return script


def verdicts(results: dict) -> list[tuple[str, bool, str]]:
    """The issue's three targets, for each workload and each gateway target."""
    checks = []
    for workload, cells in results.items():
        one, many = cells["1"], cells["32"]
        for gateway in (t for t in one if t.startswith("gateway")):
            added = one[gateway]["p50_ms"] - one["direct"]["p50_ms"]
            share = many[gateway]["rps"] / many["nginx"]["rps"]
            ratio = many[gateway]["p99_ms"] / many["nginx"]["p99_ms"]
            label = f"{workload} via {gateway}"
            failed = one[gateway]["errors"] + many[gateway]["errors"]
            checks += [
                # A gateway that fails fast would look fast: its figures count only without errors.
                (f"{label}: no failed requests", failed == 0, f"{failed} failed"),
                (f"{label}: p50 added at 1 connection <= 0.5 ms", added <= 0.5,
                 f"{added:.3f} ms"),
                (f"{label}: throughput at 32 >= 30% of nginx", share >= 0.30, f"{share:.0%}"),
                (f"{label}: p99 at 32 <= 2.5x nginx", ratio <= 2.5, f"{ratio:.2f}x"),
            ]
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="Seconds per cell.")
    parser.add_argument("--route", choices=("static", "pool", "both"), default="static",
                        help="static: the gateway alone; pool: via the ollama_pool plugin; "
                             "both: two gateway targets in the same run.")
    parser.add_argument("--keys", action="store_true",
                        help="Also run the gateway with an access key required, side by side.")
    parser.add_argument("--workload", choices=(*WORKLOADS, "all"), default="all")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument("--serve-gateway", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--nodes", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_gateway:
        serve_gateway(args.serve_gateway, args.nodes.split(","), args.key)
        return
    for case, micros in guard_cost().items():
        print(f"guard ({case}): {micros:.2f} us per request", flush=True)
    workloads = list(WORKLOADS) if args.workload == "all" else [args.workload]
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="sollol-bench-") as name, \
            ProcessGroup(log_dir=Path(name) / "logs") as group:
        tmp = Path(name)
        nodes = start_emulators(group)
        targets = {"direct": nodes[0], "nginx": start_nginx(group, tmp, nodes)}
        routes = ("static", "pool") if args.route == "both" else (args.route,)
        if args.keys:
            routes = (*routes, "keys")
        for route in routes:
            name = {"static": "gateway", "keys": "gateway-keys"}.get(route, "gateway-pool")
            targets[name] = start_gateway(group, tmp, nodes, route)
        for workload in workloads:
            path, body = WORKLOADS[workload]
            scripts = {t: wrk_script(tmp, body, BENCH_KEY if t == "gateway-keys" else None)
                       for t in targets}
            for t, url in targets.items():  # warm up connections, caches and the JIT-less paths
                run_wrk(url, path, scripts[t], 8, 1)
            results[workload] = {}
            for connections in (1, 32):
                cells = {t: run_wrk(url, path, scripts[t], connections, args.duration)
                         for t, url in targets.items()}
                results[workload][str(connections)] = cells
                for target, cell in cells.items():
                    print(f"{workload:12} c={connections:<3} {target:12} {cell['rps']:9.0f} req/s "
                          f"p50 {cell['p50_ms']:.3f} ms  p90 {cell['p90_ms']:.3f} ms  "
                          f"p99 {cell['p99_ms']:.3f} ms  errors {cell['errors']}", flush=True)
    for workload, cells in results.items():
        if "gateway-keys" in cells["1"] and "gateway" in cells["1"]:
            one, many = cells["1"], cells["32"]
            print(f"{workload}: an access key required: p50 at 1 connection "
                  f"{one['gateway-keys']['p50_ms'] - one['gateway']['p50_ms']:+.3f} ms, "
                  f"throughput at 32 {many['gateway-keys']['rps'] / many['gateway']['rps']:.0%} "
                  "of the keyless gateway's")
    checks = verdicts(results)
    report(checks, results, args.json)


def report(checks: list[tuple[str, bool, str]], results: Any, path: Path | None) -> None:
    """Print each check as PASS/FAIL; with --json, write the results and the checks too."""
    for label, ok, value in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {label}: {value}")
    if path:
        path.write_text(json.dumps({"results": results, "checks": [
            {"check": c, "ok": ok, "value": v} for c, ok, v in checks]}, indent=2))


if __name__ == "__main__":
    main()
