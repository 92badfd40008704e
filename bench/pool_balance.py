"""Pool balancing benchmark: a heterogeneous pool, the gateway's pool vs round-robin.

Run:  python bench/pool_balance.py [--tasks 200] [--tokens 40] [--base-tps 50] [--parallel 2]

Part 1 -- makespan. Three emulated Ollama nodes at 1x, 2x and 4x speed (each with `--parallel`
slots) get the same batch of tasks (all submitted at once), twice in the same run:
  * through the gateway's pool (least outstanding weighted by measured speed, central queue);
  * round-robin straight to the nodes (each node queues what it cannot start), the classic
    proxy default.
Ideal = total work / total capacity = tasks * tokens / (parallel * base_tps * (1 + 2 + 4)).

Part 2 -- model affinity. One node has the model loaded, two have it only on disk (a cold load
costs --load-seconds). Requests through the pool vs round-robin: loads triggered and latency.

Everything runs in this process on loopback (emulators on their own threads, the gateway on
its own thread); nothing else is touched. Results go to stdout (and JSON with --json).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from sollol.core.runtime import ClusterRuntime
from sollol.gateway import GatewayThread
from sollol.testing.emulator import EmulatedModel, EmulatorNode

MODEL = "bench:latest"


async def _one(session: aiohttp.ClientSession, url: str, model: str, prompt: str,
               ) -> tuple[float, str]:
    started = time.perf_counter()
    async with session.post(url + "/api/generate", json={"model": model, "prompt": prompt,
                                                         "stream": False}) as reply:
        body = await reply.json()
        if reply.status != 200:
            raise RuntimeError(f"HTTP {reply.status}: {body}")
        node = reply.headers.get("x-sollol-backend") or reply.headers.get("x-emulator-node", "")
    return time.perf_counter() - started, node


async def batch(urls: list[str], tasks: int, model: str = MODEL, *, concurrency: int = 0,
                ) -> dict[str, Any]:
    """Send `tasks` requests (round-robin over `urls`); all at once unless `concurrency`."""
    limit = concurrency or tasks
    connector = aiohttp.TCPConnector(limit=limit)
    timeout = aiohttp.ClientTimeout(total=600)
    gate = asyncio.Semaphore(limit)
    rr = itertools.cycle(urls)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def run(i: int) -> tuple[float, str]:
            async with gate:
                return await _one(session, next(rr), model, f"task {i}")

        started = time.perf_counter()
        results = await asyncio.gather(*(run(i) for i in range(tasks)))
        makespan = time.perf_counter() - started
    latencies = [r[0] for r in results]
    per_node: dict[str, int] = {}
    for _, node in results:
        per_node[node] = per_node.get(node, 0) + 1
    return {"makespan_s": round(makespan, 3),
            "mean_latency_s": round(statistics.mean(latencies), 3),
            "p95_latency_s": round(sorted(latencies)[int(0.95 * (len(latencies) - 1))], 3),
            "per_node": per_node}


def _gateway(nodes: list[EmulatorNode], parallel: int) -> GatewayThread:
    cluster = ClusterRuntime.from_config(overrides={
        "ollama_nodes": [n.address for n in nodes], "pool_node_concurrency": parallel,
        "pool_queue_size": 10_000, "pool_queue_timeout": 600.0, "health_interval": 1.0})
    return GatewayThread(cluster).start()


def makespan(args: argparse.Namespace) -> dict[str, Any]:
    speeds = {"1x": 1, "2x": 2, "4x": 4}
    nodes = [EmulatorNode(models=[MODEL], name=name, tokens_per_second=args.base_tps * factor,
                          parallel=args.parallel, response_tokens=args.tokens).start()
             for name, factor in speeds.items()]
    names = {n.address: n.name for n in nodes}
    capacity = sum(args.parallel * n.tokens_per_second for n in nodes)
    ideal = args.tasks * args.tokens / capacity
    try:
        gw = _gateway(nodes, args.parallel)
        try:
            pool = asyncio.run(batch([gw.url], args.tasks))
        finally:
            gw.stop()
        pool["per_node"] = {names.get(k, k): v for k, v in pool["per_node"].items()}
        rr = asyncio.run(batch([n.url for n in nodes], args.tasks))
    finally:
        for node in nodes:
            node.stop()
    for result in (pool, rr):
        result["vs_ideal"] = round(result["makespan_s"] / ideal, 3)
    return {"ideal_s": round(ideal, 3), "pool": pool, "round_robin": rr,
            "tasks": args.tasks, "tokens_per_task": args.tokens,
            "node_tps": {n.name: n.tokens_per_second for n in nodes},
            "parallel": args.parallel}


def affinity(args: argparse.Namespace) -> dict[str, Any]:
    def make() -> list[EmulatorNode]:
        warm = EmulatorNode(models=[EmulatedModel(MODEL, load_seconds=args.load_seconds)],
                            name="warm", tokens_per_second=args.base_tps * 2,
                            parallel=args.parallel, response_tokens=args.tokens)
        cold = [EmulatorNode(models=[EmulatedModel(MODEL, loaded=False,
                                                   load_seconds=args.load_seconds)],
                             name=name, tokens_per_second=args.base_tps * 2,
                             parallel=args.parallel, response_tokens=args.tokens)
                for name in ("cold-a", "cold-b")]
        return [n.start() for n in (warm, *cold)]

    results = {}
    for label in ("pool", "round_robin"):
        nodes = make()
        try:
            if label == "pool":
                gw = _gateway(nodes, args.parallel)
                try:
                    result = asyncio.run(batch([gw.url], args.affinity_requests,
                                               concurrency=args.parallel))
                finally:
                    gw.stop()
            else:
                result = asyncio.run(batch([n.url for n in nodes], args.affinity_requests,
                                           concurrency=args.parallel))
            result["loads"] = {n.name: n.stats()["loads"] for n in nodes}
            names = {n.address: n.name for n in nodes}
            result["per_node"] = {names.get(k, k): v for k, v in result["per_node"].items()}
        finally:
            for node in nodes:
                node.stop()
        results[label] = result
    return {"requests": args.affinity_requests, "load_seconds": args.load_seconds, **results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=40, help="tokens per task")
    parser.add_argument("--base-tps", type=float, default=50.0, help="the 1x node's tokens/s")
    parser.add_argument("--parallel", type=int, default=2, help="slots per node")
    parser.add_argument("--load-seconds", type=float, default=3.0)
    parser.add_argument("--affinity-requests", type=int, default=12)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:  # the user's config must not change the result
        os.environ["SOLLOL_CONFIG"] = str(Path(tmp) / "config.toml")
        for key in [k for k in os.environ if k.startswith("SOLLOL_") and k != "SOLLOL_CONFIG"]:
            del os.environ[key]
        os.environ.pop("OLLAMA_HOSTS", None)
        result = {"makespan": makespan(args), "affinity": affinity(args)}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    m = result["makespan"]
    print(f"makespan: {m['tasks']} tasks x {m['tokens_per_task']} tokens, nodes {m['node_tps']} "
          f"tok/s x {m['parallel']} slots; ideal {m['ideal_s']:.2f}s")
    for label in ("pool", "round_robin"):
        r = m[label]
        print(f"  {label:12s} {r['makespan_s']:7.2f}s  ({r['vs_ideal']:.2f}x ideal)  "
              f"mean {r['mean_latency_s']:.2f}s  p95 {r['p95_latency_s']:.2f}s  {r['per_node']}")
    a = result["affinity"]
    print(f"affinity: {a['requests']} requests, 1 warm + 2 cold nodes "
          f"(a load takes {a['load_seconds']:g}s)")
    for label in ("pool", "round_robin"):
        r = a[label]
        print(f"  {label:12s} mean {r['mean_latency_s']:.2f}s  p95 {r['p95_latency_s']:.2f}s  "
              f"loads {r['loads']}  {r['per_node']}")


if __name__ == "__main__":
    main()
