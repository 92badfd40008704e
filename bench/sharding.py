"""Benchmark model sharding against a directly started llama-server, in one run.

    python bench/sharding.py [--preset small] [--tokens 64] [--no-cache-run] [--scale]

Measures, on loopback:
- cold start (request to first token, the coordinator starting on demand) and warm first-token
  latency, sharded over two rpc-servers vs a directly started llama-server;
- generation tokens/s, sharded over two rpc-servers (1 thread each) vs one process (2 threads);
- the rpc-server tensor cache (`-c`) on a reload: first load, reload with the cache filled, and
  reload without a cache;
- with --scale: a 7B-shaped Q4_0 model (~3.6 GiB) over three rpc-servers (~8 minutes).

Sharded numbers go through the product path (the sharding route starts the coordinator). Print
a JSON summary at the end; --out FILE writes it too. Stops every process it starts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from sollol.core.plugin_manager import get_plugin_manager
from sollol.core.processes import ProcessGroup, free_port, wait_http
from sollol.core.runtime import ClusterRuntime, load
from sollol.llamacpp import find_binaries
from sollol.models import RouteRequest
from sollol.routes import Outcome
from sollol.testing.tiny_models import make_preset, make_tiny_model

PROMPT = [{"role": "user", "content": "describe how a model is split into layers over machines"}]
CACHE_SPEC = {"layers": 4, "dim": 2048, "ff": 5632, "dtype": "f16", "name": "cache-bench"}
"""~410 MB with 23 MB tensors: rpc-server only caches tensors over 10 MiB."""


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def first_token(base_url: str, tokens: int) -> tuple[float, dict[str, Any]]:
    """Seconds to the first streamed token, then the server's timings of a full request."""
    start = time.perf_counter()
    ttft = None
    # a fresh connection per request: llama-server closes the one a stream used
    async with httpx.AsyncClient(timeout=900) as client, client.stream(
            "POST", base_url + "/v1/chat/completions", json={
                "messages": PROMPT, "max_tokens": 4, "temperature": 0, "stream": True,
                "cache_prompt": False}) as reply:
        async for line in reply.aiter_lines():
            if line.startswith("data: {") and '"content"' in line and ttft is None:
                ttft = time.perf_counter() - start
    async with httpx.AsyncClient(timeout=900) as client:
        response = await client.post(base_url + "/v1/chat/completions", json={
            "messages": PROMPT, "max_tokens": tokens, "temperature": 0, "cache_prompt": False})
    response.raise_for_status()
    return ttft or float("nan"), response.json()["timings"]


def start_rpc(group: ProcessGroup, binary: Path, count: int, *, cache: Path | None = None,
              tag: str = "") -> list[str]:
    addresses = []
    env = dict(os.environ)
    extra = []
    if cache is not None:
        env["LLAMA_CACHE"] = str(cache)
        extra = ["-c"]
    for _ in range(count):
        port = free_port()
        group.start(f"rpc{tag}-{port}", [binary, "-H", "127.0.0.1", "-p", str(port), "-t", "1",
                                         *extra], env=env)
        addresses.append(f"127.0.0.1:{port}")
    time.sleep(0.5)
    return addresses


async def sharded(model: Path, addresses: list[str], state: Path, tokens: int,
                  repeats: int) -> dict[str, Any]:
    """Cold start and warm numbers through the sharding route."""
    config, _ = load(overrides={
        "model_sharding_enabled": True, "task_distribution_enabled": False,
        "rpc_backends": addresses, "rpc_state_dir": str(state), "plugins": ["llamacpp_rpc"],
        "rpc_ctx_size": 2048, "gguf_dirs": [str(model.parent)]})  # requests name it by path
    cluster = ClusterRuntime(config=config, pm=get_plugin_manager(["llamacpp_rpc"]))
    from sollol_plugins.llamacpp_rpc.sharding_route import ShardingRoute

    route = ShardingRoute(cluster)
    await route.start()
    try:
        start = time.perf_counter()
        lease = await route.acquire(RouteRequest(model=str(model)))
        ready = time.perf_counter() - start
        ttft, _ = await first_token(lease.base_url, 1)
        cold = ready + ttft  # request to first token, the coordinator starting on demand
        warm, speeds = [], []
        for _ in range(repeats):
            latency, timings = await first_token(lease.base_url, tokens)
            warm.append(latency)
            speeds.append(timings["predicted_per_second"])
        lease.release(Outcome(ok=True))
        report = route.snapshot()["coordinators"][0]["layers"]
    finally:
        await route.stop()
    return {"load_s": round(ready, 2), "cold_first_token_s": round(cold, 2),
            "warm_first_token_s": round(statistics.median(warm), 3),
            "tokens_per_s": round(statistics.median(speeds), 1),
            "layers": [(b["address"], b["layers"], b["weights_mib"]) for b in report["backends"]]}


async def direct(group: ProcessGroup, binary: Path, model: Path, tokens: int, repeats: int,
                 threads: int) -> dict[str, Any]:
    port = free_port()
    start = time.perf_counter()
    proc = group.start(f"direct-{port}", [binary, "-m", model, "--host", "127.0.0.1", "--port",
                                          str(port), "-t", str(threads), "-c", "2048"])
    url = f"http://127.0.0.1:{port}"
    await asyncio.to_thread(wait_http, url + "/health", process=proc, timeout=900)
    ready = time.perf_counter() - start
    ttft, _ = await first_token(url, 1)
    cold = ready + ttft
    warm, speeds = [], []
    for _ in range(repeats):
        latency, timings = await first_token(url, tokens)
        warm.append(latency)
        speeds.append(timings["predicted_per_second"])
    proc.stop()
    return {"load_s": round(ready, 2), "cold_first_token_s": round(cold, 2),
            "warm_first_token_s": round(statistics.median(warm), 3),
            "tokens_per_s": round(statistics.median(speeds), 1), "threads": threads}


async def cache_effect(group: ProcessGroup, rpc: Path, model: Path, work: Path) -> dict[str, Any]:
    """Load onto cached rpc-servers twice (filling, then reusing), and onto uncached ones twice."""
    result: dict[str, Any] = {}
    for label, cache in (("with_cache", work / "llama-cache"), ("without_cache", None)):
        addresses = start_rpc(group, rpc, 2, cache=cache, tag=label)
        loads = []
        for attempt in range(2):
            numbers = await sharded(model, addresses, work / f"state-{label}-{attempt}", 8, 1)
            loads.append(numbers["load_s"])
        result[label] = {"first_load_s": loads[0], "reload_s": loads[1]}
        for proc in list(group.processes):
            if proc.name.startswith(f"rpc{label}"):
                proc.stop()
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small", help="tiny_models preset for the main run")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-cache-run", action="store_true")
    parser.add_argument("--scale", action="store_true", help="the 7B-shaped run (~8 min)")
    parser.add_argument("--scale-tokens", type=int, default=16)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    binaries = find_binaries()
    results: dict[str, Any] = {"binaries": str(binaries.llama_server.parent),
                               "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="sollol-bench-") as tmp:
        work = Path(tmp)
        with ProcessGroup(log_dir=work / "logs") as group:
            model = make_preset(work / f"{args.preset}.gguf", args.preset)
            results["model"] = {"preset": args.preset, "bytes": model.stat().st_size}
            log(f"direct llama-server on {model.name}")
            results["direct_2_threads"] = await direct(group, binaries.llama_server, model,
                                                       args.tokens, args.repeats, 2)
            results["direct_1_thread"] = await direct(group, binaries.llama_server, model,
                                                      args.tokens, args.repeats, 1)
            log("sharded over two rpc-servers")
            addresses = start_rpc(group, binaries.rpc_server, 2)
            results["sharded_2_backends"] = await sharded(model, addresses, work / "state",
                                                          args.tokens, args.repeats)
            group.stop_all()
            if not args.no_cache_run:
                log("rpc-server cache effect")
                big = make_tiny_model(work / "cache.gguf", **CACHE_SPEC)
                results["cache"] = {"model_bytes": big.stat().st_size,
                                    **await cache_effect(group, binaries.rpc_server, big, work)}
                big.unlink()
                group.stop_all()
            if args.scale:
                log("scale run: generating a 7B-shaped Q4_0 model")
                start = time.perf_counter()
                huge = make_preset(work / "7b.gguf", "7b-q4_0")
                results["scale"] = {"model_bytes": huge.stat().st_size,
                                    "generate_s": round(time.perf_counter() - start, 1)}
                addresses = start_rpc(group, binaries.rpc_server, 3)
                log("scale run: loading over three rpc-servers")
                results["scale"].update(await sharded(huge, addresses, work / "state-7b",
                                                      args.scale_tokens, 1))
    text = json.dumps(results, indent=2)
    print(text)
    print(ratios(results), file=sys.stderr)
    if args.out:
        args.out.write_text(text + "\n")


def ratios(results: dict[str, Any]) -> str:
    """The side-by-side ratios of one run, as lines for people."""
    sharded = results["sharded_2_backends"]
    lines = ["ratios (sharded over 2 rpc-servers / one llama-server, same run):"]
    for name in ("direct_1_thread", "direct_2_threads"):
        direct = results[name]
        lines.append(
            f"  vs {name.replace('_', ' ')}: tokens/s {_ratio(sharded, direct, 'tokens_per_s')}, "
            f"cold start {_ratio(sharded, direct, 'cold_first_token_s')}, "
            f"warm first token {_ratio(sharded, direct, 'warm_first_token_s')}")
    if "cache" in results:
        cache = results["cache"]
        lines.append("  rpc-server cache, reload with / without: "
                     f"{cache['with_cache']['reload_s'] / cache['without_cache']['reload_s']:.2f}x")
    return "\n".join(lines)


def _ratio(top: dict[str, Any], bottom: dict[str, Any], key: str) -> str:
    return f"{top[key] / bottom[key]:.2f}x" if bottom.get(key) else "n/a"


if __name__ == "__main__":
    asyncio.run(main())
