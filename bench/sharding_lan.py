"""Sharding under LAN-like links: three rpc-servers in network namespaces behind `tbf` links.

    sudo python bench/sharding_lan.py [--preset 7b-q4_0] [--rates 1gbit,2500mbit] [--out FILE]

Root only (network namespaces); the whole run happens inside a namespace of its own with no
default route, so nothing leaves the machine. For each link rate it prints, side by side:

- cold start: `llama-server --rpc` launched by hand vs SOLLOL's coordinator (request to ready),
  against the physical limit (the bytes each shard received / link rate, one shard after another
  and all at once);
- a reload with the rpc-server tensor cache (`-c`) filled vs without a cache, and a first load
  onto shards that seeded their caches from their own copy of the model (`sollol rpc seed`)
  (first rate only);
- generation tokens/s sharded vs one llama-server on the gateway machine (first rate only);
- two models placed on disjoint shard sets at once vs both spread over every shard in turn
  (`--pair-preset`, first rate only).

The 7B-shaped Q4_0 model (~3.6 GiB) is generated once into the user cache dir (~80 s). Takes
about 15 minutes with the default preset and two rates. Stops every process it starts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import platformdirs

from sollol.core.plugin_manager import get_plugin_manager
from sollol.core.processes import free_port, wait_http
from sollol.core.runtime import ClusterRuntime, load
from sollol.llamacpp import find_binaries
from sollol.models import RouteRequest
from sollol.routes import Outcome
from sollol.testing.netns import Network, isolated, run_isolated
from sollol.testing.tiny_models import make_preset

PORT = 50052
PROMPT = [{"role": "user", "content": "describe how a model is split into layers over machines"}]


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def bits_per_second(rate: str) -> float:
    units = {"gbit": 1e9, "mbit": 1e6, "kbit": 1e3}
    for unit, factor in units.items():
        if rate.endswith(unit):
            return float(rate[: -len(unit)]) * factor
    raise ValueError(f"rate {rate!r}: use e.g. 1gbit or 2500mbit")


def model_file(preset: str) -> Path:
    """The preset's model, generated once into the user cache dir."""
    folder = Path(platformdirs.user_cache_dir("sollol")) / "bench-models"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{preset}.gguf"
    if not path.exists():
        log(f"generating the {preset} model into {path}")
        make_preset(path, preset)
    return path


class Shards:
    """Three rpc-server hosts on the bridge, restartable with or without a tensor cache."""

    def __init__(self, net: Network, binary: Path, work: Path) -> None:
        self.net, self.binary, self.work = net, binary, work
        self.hosts = [net.add_host(f"shard{i}") for i in range(1, 4)]
        self.procs: list[Any] = []

    @property
    def addresses(self) -> list[str]:
        return [f"{h.address}:{PORT}" for h in self.hosts]

    def start(self, cache: str | None = None) -> None:
        self.stop()
        for host in self.hosts:
            env = dict(os.environ)
            extra = []
            if cache is not None:
                env["LLAMA_CACHE"] = str(self.work / f"cache-{cache}-{host.name}")
                extra = ["-c"]
            self.procs.append(host.start(f"rpc-{cache or 'plain'}", [
                self.binary, "-H", host.address, "-p", str(PORT), "-t", "1", *extra], env=env))
        for host, proc in zip(self.hosts, self.procs, strict=True):
            from sollol.core.processes import wait_port

            wait_port(host.address, PORT, process=proc, timeout=30)

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()
        self.procs = []

    def limit(self, rate: str) -> None:
        for host in self.hosts:
            # a burst of ~1 ms at the rate: tbf needs at least one MTU per timer tick
            burst = max(16, int(bits_per_second(rate) / 8 / 1000 / 1024))
            host.rate_limit(rate, burst=f"{burst}kb")


async def by_hand(binary: Path, model: Path, addresses: list[str], logs: Path) -> float:
    """`llama-server --rpc ...` started the way its docs say: seconds to /health 200."""
    from sollol.core.processes import ProcessGroup

    port = free_port()
    with ProcessGroup(log_dir=logs) as group:
        start = time.perf_counter()
        proc = group.start("by-hand", [binary, "-m", model, "--rpc", ",".join(addresses),
                                       "-ngl", "99", "--host", "127.0.0.1", "--port", str(port),
                                       "-t", "1", "-c", "2048"])
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/health", process=proc,
                                timeout=1800)
        return time.perf_counter() - start


async def through_sollol(model: Path, addresses: list[str], state: Path, *, binaries_dir: Path,
                         tokens: int = 0, **keys: Any) -> dict[str, Any]:
    """The sharding route as the gateway runs it: request to ready, then optionally a timed
    generation; returns the layer report too."""
    from sollol_plugins.llamacpp_rpc.sharding_route import ShardingRoute

    config, _ = load(overrides={
        "model_sharding_enabled": True, "task_distribution_enabled": False,
        "rpc_backends": addresses, "rpc_state_dir": str(state), "plugins": ["llamacpp_rpc"],
        "rpc_ctx_size": 2048, "llama_cpp_dir": str(binaries_dir), "rpc_startup_timeout": 1800,
        "rpc_placement": "all", "gguf_dirs": [str(model.parent)], **keys})
    route = ShardingRoute(ClusterRuntime(config=config, pm=get_plugin_manager(["llamacpp_rpc"])))
    await route.start()
    try:
        start = time.perf_counter()
        lease = await route.acquire(RouteRequest(model=str(model)))
        ready = time.perf_counter() - start
        speed = await generate(lease.base_url, tokens) if tokens else None
        lease.release(Outcome(ok=True))
        coordinator = route.snapshot()["coordinators"][0]
    finally:
        await route.stop()
    weights = {b["address"]: b["weights_mib"] * 1024**2
               for b in coordinator["layers"]["backends"]}
    return {"ready_s": round(ready, 1), "tokens_per_s": speed, "weights_bytes": weights,
            "coordinator": coordinator}


async def generate(base_url: str, tokens: int) -> float:
    async with httpx.AsyncClient(timeout=1800, trust_env=False) as client:
        reply = await client.post(base_url + "/v1/chat/completions", json={
            "messages": PROMPT, "max_tokens": tokens, "temperature": 0, "cache_prompt": False})
    reply.raise_for_status()
    return round(reply.json()["timings"]["predicted_per_second"], 2)


async def direct_speed(binary: Path, model: Path, tokens: int, threads: int,
                       logs: Path) -> float:
    from sollol.core.processes import ProcessGroup

    port = free_port()
    with ProcessGroup(log_dir=logs) as group:
        proc = group.start("direct", [binary, "-m", model, "--host", "127.0.0.1", "--port",
                                      str(port), "-t", str(threads), "-c", "2048"])
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/health", process=proc,
                                timeout=1800)
        return await generate(f"http://127.0.0.1:{port}", tokens)


async def pair_vs_spread(shards: Shards, preset: str, work: Path, binaries_dir: Path,
                         tokens: int) -> dict[str, Any]:
    """Two models at once on disjoint shards vs both spread over all three, one after the
    other: total generated tokens per second over the same work."""
    from sollol_plugins.llamacpp_rpc.sharding_route import ShardingRoute

    first = model_file(preset)
    second = work / "pair-second.gguf"
    if not second.exists():
        second.symlink_to(first)  # same weights, another name: another coordinator
    results = {}
    for label, keys in (("disjoint", {"rpc_placement": "fewest", "rpc_max_coordinators": 2}),
                        ("spread", {"rpc_placement": "all", "rpc_max_coordinators": 1})):
        config, _ = load(overrides={
            "model_sharding_enabled": True, "task_distribution_enabled": False,
            "rpc_backends": shards.addresses, "rpc_state_dir": str(work / f"pair-{label}"),
            "plugins": ["llamacpp_rpc"], "rpc_ctx_size": 2048,
            "gguf_dirs": [str(first.parent), str(work)],  # requests name the models by path
            "llama_cpp_dir": str(binaries_dir), **keys})
        pm = get_plugin_manager(["llamacpp_rpc"])
        route = ShardingRoute(ClusterRuntime(config=config, pm=pm))
        await route.start()
        try:
            async def serve(model: Path, route: ShardingRoute = route) -> None:
                for _ in range(2):
                    lease = await route.acquire(RouteRequest(model=str(model)))
                    try:
                        await generate(lease.base_url, tokens)
                    finally:
                        lease.release(Outcome(ok=True))

            for model in (first, second):  # loads are not what this compares
                lease = await route.acquire(RouteRequest(model=str(model)))
                lease.release(Outcome(ok=True))
            start = time.perf_counter()
            await asyncio.gather(serve(first), serve(second))
            elapsed = time.perf_counter() - start
            shards_used = {c["model"]: c["backends"] for c in route.snapshot()["coordinators"]}
        finally:
            await route.stop()
        results[label] = {"tokens_per_s": round(4 * tokens / elapsed, 2), "shards": shards_used}
    return results


async def run(args: argparse.Namespace) -> dict[str, Any]:
    binaries = find_binaries()
    model = model_file(args.preset)
    size = model.stat().st_size
    results: dict[str, Any] = {"preset": args.preset, "model_bytes": size, "rates": {},
                               "machine": f"{os.cpu_count()} cores", "date": time.strftime("%F")}
    with tempfile.TemporaryDirectory(prefix="sollol-lan-") as tmp, \
            Network(log_dir=Path(tmp) / "logs") as net:
        work = Path(tmp)
        shards = Shards(net, binaries.rpc_server, work)
        for index, rate in enumerate(args.rates.split(",")):
            log(f"links at {rate}")
            shards.limit(rate)
            shards.start()
            hand = await by_hand(binaries.llama_server, model, shards.addresses,
                                 work / "logs" / f"by-hand-{index}")
            shards.start()  # fresh rpc-servers for each load
            ours = await through_sollol(model, shards.addresses, work / f"state-{index}",
                                        binaries_dir=binaries.llama_server.parent,
                                        tokens=args.tokens if index == 0 else 0)
            per_shard = ours["weights_bytes"]
            bps = bits_per_second(rate)
            entry = {"by_hand_s": round(hand, 1), "sollol_s": ours["ready_s"],
                     "wire_limit_sequential_s": round(sum(per_shard.values()) * 8 / bps, 1),
                     "wire_limit_parallel_s": round(max(per_shard.values()) * 8 / bps, 1)}
            if index == 0:
                entry["sharded_tokens_per_s"] = ours["tokens_per_s"]
                log("reload with and without the rpc-server cache")
                shards.start(cache="on")
                fill = await through_sollol(model, shards.addresses, work / "cache-1",
                                            binaries_dir=binaries.llama_server.parent)
                shards.start(cache="on")  # same cache folders: a reload
                reuse = await through_sollol(model, shards.addresses, work / "cache-2",
                                             binaries_dir=binaries.llama_server.parent)
                entry["cache"] = {"first_load_s": fill["ready_s"], "reload_s": reuse["ready_s"],
                                  "without_cache_s": ours["ready_s"]}
                log("first load onto shards that seeded their caches from their own copy")
                from sollol_plugins.llamacpp_rpc.seed import rpc_cache_dir, seed

                seeding = [seed(model, rpc_cache_dir(
                    {"LLAMA_CACHE": str(work / f"cache-seeded-{h.name}")})) for h in shards.hosts]
                shards.start(cache="seeded")
                seeded = await through_sollol(model, shards.addresses, work / "seeded",
                                              binaries_dir=binaries.llama_server.parent)
                entry["cache"].update(seeded_first_load_s=seeded["ready_s"],
                                      seed_s=max(r.seconds for r in seeding))
                log("one llama-server on the gateway machine")
                shards.stop()
                entry["direct_tokens_per_s"] = await direct_speed(
                    binaries.llama_server, model, args.tokens, 1, work / "logs" / "direct")
                if args.pair_preset:
                    log(f"two {args.pair_preset} models: disjoint shards vs spread")
                    shards.start()
                    entry["pair"] = await pair_vs_spread(
                        shards, args.pair_preset, work, binaries.llama_server.parent,
                        args.tokens)
            results["rates"][rate] = entry
            shards.stop()
    return results


def ratios(results: dict[str, Any]) -> str:
    lines = [f"sharding over 3 rpc-servers behind tbf links, {results['preset']} "
             f"({results['model_bytes'] / 1024**3:.2f} GiB):"]
    for rate, r in results["rates"].items():
        lines.append(f"  {rate}: ready by hand {r['by_hand_s']} s, through SOLLOL "
                     f"{r['sollol_s']} s ({r['sollol_s'] / r['by_hand_s']:.2f}x); wire limit "
                     f"{r['wire_limit_sequential_s']} s one shard after another, "
                     f"{r['wire_limit_parallel_s']} s all at once")
        if "cache" in r:
            c = r["cache"]
            lines.append(f"  {rate}: rpc-server cache: first load {c['first_load_s']} s, reload "
                         f"{c['reload_s']} s ({c['reload_s'] / c['without_cache_s']:.2f}x of a "
                         "load without a cache)")
            lines.append(f"  {rate}: first load onto shards that seeded their own caches "
                         f"({c['seed_s']} s each, beforehand): {c['seeded_first_load_s']} s = "
                         f"{c['seeded_first_load_s'] / r['by_hand_s']:.2f}x the by-hand load")
        if r.get("direct_tokens_per_s"):
            lines.append(f"  {rate}: tokens/s sharded {r['sharded_tokens_per_s']} vs one "
                         f"llama-server {r['direct_tokens_per_s']} "
                         f"({r['sharded_tokens_per_s'] / r['direct_tokens_per_s']:.2f}x)")
        if "pair" in r:
            p = r["pair"]
            lines.append(f"  {rate}: two models at once on disjoint shards "
                         f"{p['disjoint']['tokens_per_s']} tokens/s vs spread over all "
                         f"{p['spread']['tokens_per_s']} "
                         f"({p['disjoint']['tokens_per_s'] / p['spread']['tokens_per_s']:.2f}x)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="7b-q4_0")
    parser.add_argument("--pair-preset", default="medium",
                        help="model for the disjoint-vs-spread comparison ('' to skip)")
    parser.add_argument("--rates", default="1gbit,2500mbit")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not isolated():
        if os.geteuid() != 0:
            raise SystemExit("bench/sharding_lan.py needs root (network namespaces)")
        done = run_isolated([sys.executable, *sys.argv], capture=False)
        raise SystemExit(done.returncode)
    results = asyncio.run(run(args))
    text = json.dumps(results, indent=2)
    print(text)
    print(ratios(results), file=sys.stderr)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
