"""bench/sharding_speed.py's sections for pipeline parallelism, concurrent sequences and
speculative decoding (issue 24). Each takes the Bench (shards, model, binaries, work folder) and
returns its figures; `*_table` turns them into lines.

- pipeline: prefill tokens/s of a long prompt (`--prompt-tokens`, default exactly 4 micro-batches
  of `--ubatch`, BOS included) with llama.cpp's pipeline parallelism on, then off, on the same
  shards. "Off" adds a tensor override that matches no tensor (`-ot ^sollol_no_such_tensor$=CPU`):
  llama.cpp turns pipeline parallelism off whenever an override is given, and nothing else
  changes. Each shard's rpc-server runs in its own cgroup v1 CPU group (`--shard-cpu` of a
  core), so the three shards behave like separate machines instead of sharing two cores.
- concurrent: aggregate generated tokens/s at 1, 2, 4 and 8 requests at once on one coordinator
  started with `rpc_parallel = 8`.
- draft: generated tokens/s without a draft, with a random-weight draft of the same vocabulary
  (acceptance near 0: the cost of drafting), and with the model itself as its draft on the
  gateway (greedy decoding, so every drafted token is accepted but for near-ties: the upper
  bound). The acceptance each run reached is read from llama-server's `timings`
  (draft_n_accepted / draft_n).

The shards keep a tensor cache (`-c`) for the whole run: the first load sends the weights, every
later coordinator load sends hashes, so six loads of the 7B-shaped model do not cost six times
its wire time; the figures are measured after each load and do not depend on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from typing import Any

import httpx
from sharding_lan import log

from sollol.testing.tiny_models import PRESETS, make_tiny_model

CGROUP = Path("/sys/fs/cgroup/cpu")
NO_PIPELINE = ["-ot", "^sollol_no_such_tensor$=CPU"]
CACHE = "speed"
"""The shards' tensor cache for these sections (Shards.start(cache=...))."""
MICRO_BATCHES = 4

DEFAULTS: dict[str, dict[str, int]] = {
    # a 7B prefill runs at a few tokens/s on half-core shards: 4 x 32 tokens, not 4 x 128;
    # the self draft runs the whole 7B on the gateway's CPU per drafted token
    "7b-q4_0": {"ubatch": 32, "tokens": 16, "draft_tokens": 16},
}
FALLBACK = {"ubatch": 128, "tokens": 32, "draft_tokens": 32}


def fill_defaults(args: Any) -> None:
    """Knobs left unset on the command line take the preset's defaults; the prompt is exactly
    MICRO_BATCHES micro-batches with its BOS token."""
    defaults = {**FALLBACK, **DEFAULTS.get(args.preset, {})}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.prompt_tokens is None:
        args.prompt_tokens = MICRO_BATCHES * args.ubatch - 1


def load_average() -> float:
    return round(os.getloadavg()[0], 1)


@contextlib.contextmanager
def cpu_limited(bench: Any, share: float) -> Any:
    """Put each shard host's processes into its own CPU group of `share` cores (cgroup v1)."""
    groups = []
    try:
        for host in bench.shards.hosts:
            group = CGROUP / f"sollol-bench-{host.name}-{os.getpid()}"
            group.mkdir()
            groups.append(group)
            (group / "cpu.cfs_quota_us").write_text(str(int(share * 100_000)))
            for pid in host.pids():
                (group / "cgroup.procs").write_text(str(pid))
        yield groups
    finally:
        bench.shards.stop()
        for group in groups:
            for _ in range(50):  # rmdir fails while a process is still leaving
                try:
                    group.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


def throttled(groups: list[Path]) -> dict[str, float]:
    out = {}
    for group in groups:
        stat = dict(line.split() for line in (group / "cpu.stat").read_text().splitlines())
        out[group.name] = round(int(stat["throttled_time"]) / 1e9, 1)
    return out


async def _complete(url: str, prompt: str, tokens: int, **more: Any) -> dict[str, Any]:
    """One greedy completion of exactly `tokens` tokens; `_started`/`_ended` are its span."""
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=3600, trust_env=False) as client:
        reply = await client.post(url + "/v1/completions", json={
            "prompt": prompt, "max_tokens": tokens, "temperature": 0, "cache_prompt": False,
            "ignore_eos": True, **more})
    reply.raise_for_status()
    return {**reply.json(), "_started": started, "_ended": time.perf_counter()}


async def _with_coordinator(bench: Any, state: str, measure: Any, **keys: Any) -> Any:
    """Start the model through the sharding route with `keys`, run `measure(url, coord)`."""
    from sollol_plugins.llamacpp_rpc.sharding_route import ShardingRoute

    from sollol.core.plugin_manager import get_plugin_manager
    from sollol.core.runtime import ClusterRuntime, load
    from sollol.models import RouteRequest
    from sollol.routes import Outcome

    config, _ = load(overrides={
        "model_sharding_enabled": True, "task_distribution_enabled": False,
        "rpc_backends": bench.shards.addresses, "rpc_state_dir": str(bench.work / state),
        "plugins": ["llamacpp_rpc"], "llama_cpp_dir": str(bench.binaries_dir),
        "rpc_startup_timeout": 1800, "rpc_wait_timeout": 3600, "rpc_placement": "all",
        "gguf_dirs": [str(bench.model.parent)], **keys})
    route = ShardingRoute(ClusterRuntime(config=config, pm=get_plugin_manager(["llamacpp_rpc"])))
    await route.start()
    try:
        lease = await route.acquire(RouteRequest(model=str(bench.model)))
        try:
            coord = route.snapshot()["coordinators"][0]
            return await measure(lease.base_url, coord)
        finally:
            lease.release(Outcome(ok=True))
    finally:
        await route.stop()


async def pipeline(bench: Any) -> dict[str, Any]:
    """Prefill tokens/s of a long prompt, pipeline parallelism on vs off, CPU-limited shards."""
    args = bench.args
    prompt = " ".join(["shard"] * args.prompt_tokens)
    out: dict[str, Any] = {"prompt_tokens": args.prompt_tokens, "ubatch": args.ubatch,
                           "shard_cpu": args.shard_cpu}
    for name, extra in (("on", []), ("off", NO_PIPELINE)):
        log(f"pipeline {name}: prefill of {args.prompt_tokens} tokens")
        bench.shards.start(cache=CACHE)
        with cpu_limited(bench, args.shard_cpu) as groups:
            async def measure(url: str, coord: dict[str, Any]) -> dict[str, Any]:
                reply = await _complete(url, prompt, 1)
                t = reply["timings"]
                return {"state": coord["pipeline"], "prompt_n": t["prompt_n"],
                        "micro_batches": -(-t["prompt_n"] // args.ubatch),
                        "prefill_s": round(t["prompt_ms"] / 1000, 1),
                        "prefill_tps": round(t["prompt_per_second"], 2)}

            out[name] = await _with_coordinator(
                bench, f"state-pipe-{name}", measure,
                rpc_ctx_size=args.prompt_tokens + 256,
                rpc_coordinator_args=["-ub", str(args.ubatch), "-b", "2048", *extra])
            out[name]["throttled_s"] = throttled(groups)
    out["on_vs_off"] = round(out["on"]["prefill_tps"] / out["off"]["prefill_tps"], 2)
    return out


def pipeline_table(r: dict[str, Any]) -> list[str]:
    on, off = r["on"], r["off"]
    return [f"prefill tokens/s, {on['prompt_n']} tokens = {on['micro_batches']} x -ub "
            f"{r['ubatch']}, shards at {r['shard_cpu']} core each:",
            f"  pipeline on {on['prefill_tps']} ({on['prefill_s']} s)  off "
            f"{off['prefill_tps']} ({off['prefill_s']} s)  on/off {r['on_vs_off']}x",
            f"  states reported: {on['state']!r} / {off['state']!r}; CPU throttled per shard "
            f"(s): on {list(on['throttled_s'].values())} off "
            f"{list(off['throttled_s'].values())}"]


async def concurrent(bench: Any) -> dict[str, Any]:
    """Aggregate generated tokens/s at 1, 2, 4 and 8 requests at once on one coordinator."""
    tokens = bench.args.tokens
    bench.shards.start(cache=CACHE)

    async def measure(url: str, coord: dict[str, Any]) -> dict[str, Any]:
        runs = {}
        for count in (1, 2, 4, 8):
            log(f"concurrent: {count} request(s) of {tokens} tokens")
            started = time.perf_counter()
            replies = await asyncio.gather(*(_complete(url, f"request {i} about the shard",
                                                       tokens) for i in range(count)))
            wall = time.perf_counter() - started
            made = sum(r["usage"]["completion_tokens"] for r in replies)
            # the overlap: how much of the wall time every request was running at once
            spans = [(r["_started"], r["_ended"]) for r in replies]
            overlap = max(0.0, min(e for _, e in spans) - max(s for s, _ in spans))
            runs[str(count)] = {"tokens": made, "seconds": round(wall, 1),
                                "tokens_per_s": round(made / wall, 2),
                                "all_running_s": round(overlap, 1)}
        return runs

    try:
        return await _with_coordinator(bench, "state-concurrent", measure, rpc_parallel=8,
                                       rpc_ctx_size=512)
    finally:
        bench.shards.stop()


def concurrent_table(r: dict[str, Any]) -> list[str]:
    runs = {n: v for n, v in r.items() if n.isdigit()}
    cells = "  ".join(f"{n}: {v['tokens_per_s']}" for n, v in runs.items())
    ran = "  ".join(f"{n}: {v['all_running_s']}/{v['seconds']} s" for n, v in runs.items())
    first = next(iter(runs.values()))
    return [f"generated tokens/s, all requests together ({first['tokens']} tokens each), by "
            f"requests at once:  {cells}",
            f"  all requests running at once / wall:  {ran}"]


async def draft(bench: Any) -> dict[str, Any]:
    """Tokens/s without a draft, with a same-vocabulary random draft and with the model itself."""
    tokens, model = bench.args.draft_tokens, bench.model
    spec = PRESETS[bench.args.preset]
    # beside the model: a draft must resolve like any model (gguf_dirs)
    tiny = make_tiny_model(model.parent / f"draft-random-{bench.args.preset}.gguf", layers=2,
                           dim=64,
                           vocab_size=spec.vocab_size, seed=99)
    out: dict[str, Any] = {}
    for name, drafted in (("none", None), ("random_same_vocab", tiny), ("self", model)):
        log(f"draft: {name}")
        bench.shards.start(cache=CACHE)

        async def measure(url: str, coord: dict[str, Any]) -> dict[str, Any]:
            reply = await _complete(url, "tell me about the shard layer", tokens)
            t = reply["timings"]
            return {"tokens": t["predicted_n"],
                    "tokens_per_s": round(t["predicted_per_second"], 2),
                    "draft_n": t.get("draft_n", 0), "accepted": t.get("draft_n_accepted", 0)}

        keys = {"rpc_draft_models": {str(model): str(drafted)}} if drafted else {}
        try:
            out[name] = await _with_coordinator(bench, f"state-draft-{name}", measure,
                                                rpc_ctx_size=512, **keys)
        finally:
            bench.shards.stop()
    return out


def draft_table(r: dict[str, Any]) -> list[str]:
    def acc(v: dict[str, Any]) -> str:
        return f"{v['accepted']}/{v['draft_n']} accepted" if v["draft_n"] else "no draft"
    runs = {n: v for n, v in r.items() if isinstance(v, dict) and "tokens_per_s" in v}
    return [f"generated tokens/s ({r['none']['tokens']} tokens), by draft:  " + "  ".join(
        f"{n} {v['tokens_per_s']} ({acc(v)})" for n, v in runs.items())]
