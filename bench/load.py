"""Load, soak and scale: the gateway under many clients, for long, over many nodes.

- load: 1,000 concurrent streaming clients through the gateway (real pool route) to emulated
  nodes; every stream must complete; p50/p99 of time to first chunk.
- queue limit: the same burst against a small queue: only 200s and 429s with Retry-After.
- soak: 20,000 sequential requests, then 2,000 clients that hang up mid-stream; the growth of the
  gateway's RSS, open file descriptors, asyncio tasks and upstream connections.
- scale: the pool's scheduler in-process with 4,000 requests queued over 8, 64 and 256 nodes:
  CPU per decision and waiters inspected per release.

The gateway runs on a thread of this process (so /proc/self is the gateway's); the clients run in
a child process (aiohttp); the nodes are `python -m sollol.testing.emulator` processes. Everything
it starts it stops.

    python bench/load.py                                   # everything, full size
    python bench/load.py --only scale
    python bench/load.py --clients 200 --requests 2000 --disconnects 200   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

FAST, SLOW = "fast", "slow"
MESSAGES = [{"role": "user", "content": "hi"}]


# ------------------------------------------------------------------------------ the client side

async def _client(mode: str, url: str, count: int, concurrency: int) -> dict[str, Any]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        if mode == "sequential":
            body = {"model": FAST, "prompt": "x", "stream": False}
            statuses: dict[int, int] = {}
            for _ in range(count):
                async with session.post(url + "/api/generate", json=body) as reply:
                    await reply.read()
                    statuses[reply.status] = statuses.get(reply.status, 0) + 1
            return {"statuses": statuses}
        gate = asyncio.Semaphore(concurrency)
        results = await asyncio.gather(*(_one(session, url, mode, gate) for _ in range(count)))
    return {"results": results}


async def _one(session: Any, url: str, mode: str, gate: asyncio.Semaphore) -> dict[str, Any]:
    model = SLOW if mode == "disconnect" else FAST
    body = {"model": model, "messages": MESSAGES, "stream": True}
    async with gate:
        start = time.perf_counter()
        async with session.post(url + "/api/chat", json=body) as reply:
            first = await reply.content.readline()
            ttfc = time.perf_counter() - start
            if mode == "disconnect":
                reply.close()  # hang up mid-stream
                return {"status": reply.status}
            last = first
            async for line in reply.content:
                if line.strip():
                    last = line
            done = reply.status == 200 and json.loads(last).get("done") is True
            return {"status": reply.status, "ttfc": ttfc, "complete": done,
                    "retry_after": reply.headers.get("retry-after")}


def run_clients(mode: str, url: str, count: int, concurrency: int) -> dict[str, Any]:
    """Run a client mode in a child process (its CPU and sockets are not the gateway's)."""
    out = subprocess.run([sys.executable, __file__, "--client", mode, "--url", url,
                          "--count", str(count), "--concurrency", str(concurrency)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


# ----------------------------------------------------------------------------- the server side

def start_nodes(group: Any, fast_nodes: int) -> tuple[list[str], list[int]]:
    from sollol.core.processes import free_port, wait_http

    addresses, ports = [], []
    specs = [(FAST, ["--response-tokens", "12"])] * fast_nodes  # answers at once
    specs.append((SLOW, ["--tokens-per-second", "50", "--response-tokens", "200"]))
    for index, (model, flags) in enumerate(specs):
        port = free_port()
        proc = group.start(f"emulator-{index}", [
            sys.executable, "-m", "sollol.testing.emulator", "--port", str(port),
            "--model", model, "--parallel", "0", *flags])
        wait_http(f"http://127.0.0.1:{port}/api/version", process=proc, timeout=60)
        addresses.append(f"127.0.0.1:{port}")
        ports.append(port)
    return addresses, ports


def gateway(addresses: list[str], **config: Any) -> Any:
    from sollol.core.runtime import ClusterRuntime
    from sollol.gateway import GatewayThread

    cluster = ClusterRuntime.from_config(overrides={
        "plugins": ["ollama_pool"], "ollama_nodes": addresses, "pool_queue_timeout": 600.0,
        "discovery_interval": 0, **config})
    return GatewayThread(cluster)  # started by `with`


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def load_run(addresses: list[str], clients: int) -> dict[str, Any]:
    """The burst through the gateway, and the same burst straight at one node (the machine's
    own figure, measured in the same run: the ratio is the gateway's)."""
    with gateway(addresses, pool_node_concurrency=64, pool_queue_size=clients * 2) as gw:
        run_clients("stream", gw.url, 50, 50)  # warm up
        results = run_clients("stream", gw.url, clients, clients)["results"]
    direct = run_clients("stream", f"http://{addresses[0]}", clients, clients)["results"]
    out = {"clients": clients, "completed": sum(r["complete"] for r in results),
           "statuses": _count(r["status"] for r in results)}
    for name, rows in (("gateway", results), ("direct_to_one_node", direct)):
        ttfc = [r["ttfc"] * 1000 for r in rows if r["status"] == 200]
        if not ttfc:
            raise RuntimeError(f"no stream succeeded: {_count(r['status'] for r in rows)}")
        out[f"ttfc_ms_{name}"] = {"p50": round(_pct(ttfc, 0.5), 1),
                                  "p99": round(_pct(ttfc, 0.99), 1)}
    out["ttfc_p50_ratio_gateway_to_direct"] = round(
        out["ttfc_ms_gateway"]["p50"] / out["ttfc_ms_direct_to_one_node"]["p50"], 2)
    return out


def queue_limit_run(addresses: list[str], clients: int) -> dict[str, Any]:
    queue = max(10, clients // 10)
    with gateway(addresses, pool_node_concurrency=4, pool_queue_size=queue) as gw:
        results = run_clients("stream", gw.url, clients, clients)["results"]
    rejected = [r for r in results if r["status"] == 429]
    return {"clients": clients, "queue_limit": queue,
            "statuses": _count(r["status"] for r in results),
            "complete_200s": all(r["complete"] for r in results if r["status"] == 200),
            "429s_with_retry_after": sum(bool(r["retry_after"]) for r in rejected)}


def soak_run(addresses: list[str], ports: list[int], requests: int,
             disconnects: int) -> dict[str, Any]:
    from sollol.core.router import POOL
    from sollol.testing.gauges import read

    with gateway(addresses, pool_node_concurrency=8) as gw:
        loop = gw.gateway.cluster.routes[POOL]._task.get_loop()
        run_clients("sequential", gw.url, 1000, 1)  # warm up
        before = read(loop, ports)
        statuses: dict[str, int] = {}
        quarters = []  # a leak grows with every quarter; a cache or an arena fills, then stops
        seconds = 0.0
        for _ in range(4):
            started = time.perf_counter()
            part = run_clients("sequential", gw.url, requests // 4, 1)
            seconds += time.perf_counter() - started
            for status, count in part["statuses"].items():
                statuses[status] = statuses.get(status, 0) + count
            quarters.append(read(loop, ports).rss_kib)
        middle = read(loop, ports)
        cut = run_clients("disconnect", gw.url, disconnects, 50)["results"]
        _settle(gw, addresses[-1])
        after = read(loop, ports)
    return {"requests": requests, "statuses": statuses, "rss_kib_after_each_quarter": quarters,
            "requests_per_s": round(requests / seconds), "disconnects": disconnects,
            "disconnect_statuses": _count(r["status"] for r in cut),
            "before": before.as_dict(), "after_requests": middle.as_dict(),
            "after_disconnects": after.as_dict(), "growth": (after - before).as_dict()}


def _settle(gw: Any, slow: str) -> None:
    """Until the slow node serves nothing (cut streams were cut upstream too)."""
    import httpx

    for _ in range(1200):
        stats = httpx.get(f"http://{slow}/_emulator/stats").json()
        nodes = httpx.get(gw.url + "/sollol/nodes").json()["nodes"]
        if stats["in_flight"] <= 1 and all(n["in_flight"] == 0 for n in nodes):
            return
        time.sleep(0.05)
    raise RuntimeError("the gateway never went idle after the disconnects")


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for value in values:
        out[str(value)] = out.get(str(value), 0) + 1
    return out


# ------------------------------------------------------------------------------------- scale

async def _scale_one(nodes: int, queued: int) -> dict[str, Any]:
    from sollol_plugins.ollama_pool.node import Node
    from sollol_plugins.ollama_pool.pool_route import PoolRoute

    from sollol.core.runtime import ClusterRuntime, load
    from sollol.models import Backend, HealthReport, RouteRequest
    from sollol.routes import Outcome

    config, pm = load(overrides={"plugins": ["ollama_pool"], "pool_queue_size": queued * 2,
                                 "pool_queue_timeout": 3600.0})
    route = PoolRoute(ClusterRuntime(config=config, pm=pm))
    for i in range(nodes):
        node = Node(Backend(f"n{i}", "ollama", f"n{i}"), 1)
        node.apply(HealthReport(node.id, True, models=("m",), loaded_models=("m",)), 0.0,
                   route.settings)
        route.nodes[node.id] = node
    route.scheduler.members_changed()
    ok = Outcome(True, 200, tokens=10, seconds=0.1)
    held = [await route.acquire(RouteRequest("m")) for _ in range(nodes)]
    waiting = [asyncio.create_task(route.acquire(RouteRequest("m"))) for _ in range(queued)]
    for _ in range(3):
        await asyncio.sleep(0)
    cpu = 0.0
    inspected = route.scheduler.waiters.inspections
    decisions = 0
    pending = list(waiting)
    while held and decisions < queued:
        lease = held.pop(0)
        start = time.thread_time()
        lease.release(ok)  # frees a slot: the scheduler places the next waiter
        cpu += time.thread_time() - start
        decisions += 1
        await asyncio.sleep(0)
        still = []
        for task in pending:
            if task.done():
                held.append(task.result())
            else:
                still.append(task)
        pending = still
    inspected = route.scheduler.waiters.inspections - inspected
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return {"nodes": nodes, "queued": queued, "decisions": decisions,
            "cpu_us_per_decision": round(cpu / decisions * 1e6, 1),
            "waiters_inspected_per_release": round(inspected / decisions, 2)}


def scale_run() -> list[dict[str, Any]]:
    rows = []
    for nodes, queued in ((8, 4000), (64, 4000), (256, 4000), (64, 400)):
        best = None
        for _ in range(3):  # the least noisy of three (a shared machine)
            row = asyncio.run(_scale_one(nodes, queued))
            if best is None or row["cpu_us_per_decision"] < best["cpu_us_per_decision"]:
                best = row
        rows.append(best)
    return rows


# ----------------------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["load", "queue", "soak", "scale"], action="append")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--disconnects", type=int, default=2_000)
    parser.add_argument("--nodes", type=int, default=4, help="Fast emulated nodes.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        print(json.dumps(asyncio.run(_client(args.client, args.url, args.count,
                                             args.concurrency))))
        return
    import resource

    from sollol.core.processes import ProcessGroup

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 1,000 clients need the fds
    runs = set(args.only or ["load", "queue", "soak", "scale"])
    results: dict[str, Any] = {}
    if runs - {"scale"}:
        import tempfile

        with tempfile.TemporaryDirectory() as logs, ProcessGroup(Path(logs)) as group:
            addresses, ports = start_nodes(group, args.nodes)
            fast = addresses[:-1]
            if "load" in runs:
                results["load"] = load_run(fast, args.clients)
                _print("load", results["load"])
            if "queue" in runs:
                results["queue_limit"] = queue_limit_run(fast, args.clients)
                _print("queue limit", results["queue_limit"])
            if "soak" in runs:
                results["soak"] = soak_run(addresses, ports, args.requests, args.disconnects)
                _print("soak", results["soak"])
    if "scale" in runs:
        results["scale"] = scale_run()
        base = results["scale"][0]["cpu_us_per_decision"]
        for row in results["scale"]:
            print(f"scale: {row['nodes']:>3} nodes, {row['queued']:>4} queued: "
                  f"{row['cpu_us_per_decision']:6.1f} us CPU per decision "
                  f"({row['cpu_us_per_decision'] / base:.2f}x the 8-node figure), "
                  f"{row['waiters_inspected_per_release']} waiters inspected per release")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def _print(name: str, data: dict[str, Any]) -> None:
    print(f"{name}: {json.dumps(data)}", flush=True)


if __name__ == "__main__":
    main()
