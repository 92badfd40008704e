"""Sharded models at full speed, side by side in one run (issue 24), over 1 Gbit/s links.

    sudo python bench/sharding_speed.py [--preset 7b-q4_0] [--rate 1gbit]
                                        [--sections cold,pipeline,concurrent,draft] [--out FILE]

Root only: three rpc-servers in network namespaces behind `tbf` links, set up by
`bench/sharding_lan.py` (imported, not copied); the whole run happens inside a namespace with no
default route. Each section adds its figures to one JSON result and one table:

- cold: ready time of a first load onto shards that never saw the model: `llama-server --rpc` by
  hand; SOLLOL plain; SOLLOL with gateway-filled caches (`rpc_fill_caches`, rpc-servers with
  `-c` and empty caches); SOLLOL with the write-behind relay (`rpc_load_relay`), alone and with
  filled caches; the parallel wire limit (the largest shard's bytes / link rate: every link busy
  at once).
- pipeline, concurrent, draft: bench/speed_sections.py.

The table at the end has every section's figures and the load average before and after each
section (the machine may be shared). About 11 minutes for pipeline,concurrent,draft with the
7B-shaped model on a busy 2-core machine, 2.5 more for cold. Stops every process it starts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import speed_sections
from sharding_lan import (  # bench/ is not a package: its folder is on sys.path
    Shards,
    bits_per_second,
    by_hand,
    log,
    model_file,
    through_sollol,
)

from sollol.llamacpp import find_binaries
from sollol.testing.netns import Network, isolated, run_isolated


class Bench:
    """What every section gets: the shards, the model, the binaries and a work folder."""

    def __init__(self, shards: Shards, model: Path, binaries: Any, work: Path,
                 args: argparse.Namespace) -> None:
        self.shards, self.model, self.binaries, self.work, self.args = (
            shards, model, binaries, work, args)

    @property
    def binaries_dir(self) -> Path:
        return self.binaries.llama_server.parent


async def cold(bench: Bench) -> dict[str, Any]:
    """First load onto shards that never saw the model, three ways, and the wire limit."""
    shards, model = bench.shards, bench.model
    log("cold load: by hand")
    shards.start()
    hand = await by_hand(bench.binaries.llama_server, model, shards.addresses,
                         bench.work / "logs" / "by-hand")
    log("cold load: SOLLOL plain")
    shards.start()
    plain = await through_sollol(model, shards.addresses, bench.work / "state-plain",
                                 binaries_dir=bench.binaries_dir)
    log("cold load: SOLLOL with gateway-filled caches (empty -c caches)")
    shards.start(cache="filled")
    filled = await through_sollol(model, shards.addresses, bench.work / "state-filled",
                                  binaries_dir=bench.binaries_dir, rpc_fill_caches=True)
    log("cold load: SOLLOL with the write-behind relay")
    shards.start()
    relayed = await through_sollol(model, shards.addresses, bench.work / "state-relay",
                                   binaries_dir=bench.binaries_dir, rpc_load_relay=True)
    log("cold load: SOLLOL, write-behind relay + gateway-filled caches (empty -c caches)")
    shards.start(cache="relay-filled")  # caches of their own: the "filled" ones are full now
    both = await through_sollol(model, shards.addresses, bench.work / "state-relay-filled",
                                binaries_dir=bench.binaries_dir, rpc_load_relay=True,
                                rpc_fill_caches=True)
    per_shard = plain["weights_bytes"]
    bps = bits_per_second(bench.args.rate)
    shards.stop()
    fills = filled["coordinator"]["cache_fill"] or {}
    fill_s = max((f["seconds"] for f in fills.values()), default=0.0)
    return {"by_hand_s": round(hand, 1), "sollol_plain_s": plain["ready_s"],
            "sollol_filled_s": filled["ready_s"],
            "fill_s": fill_s, "load_after_fill_s": round(filled["ready_s"] - fill_s, 1),
            "fill_bytes_per_shard": {a: f["sent_bytes"] for a, f in fills.items()},
            "fill_states": {a: f["state"] for a, f in fills.items()},
            "coordinator_bytes_per_shard": {
                a: u["bytes"] for a, u in filled["coordinator"]["upload"].items()},
            "fill_wire_limit_s": round(max((f["bytes"] for f in fills.values()), default=0)
                                       * 8 / bps, 1),
            "wire_limit_parallel_s": round(max(per_shard.values()) * 8 / bps, 1),
            "wire_limit_sequential_s": round(sum(per_shard.values()) * 8 / bps, 1),
            "filled_vs_by_hand": round(filled["ready_s"] / hand, 2),
            "sollol_relay_s": relayed["ready_s"],
            "relay_vs_by_hand": round(relayed["ready_s"] / hand, 2),
            "relay": _relay_figures(relayed["coordinator"]),
            "sollol_relay_filled_s": both["ready_s"],
            "relay_filled_vs_by_hand": round(both["ready_s"] / hand, 2),
            "relay_filled": _relay_figures(both["coordinator"])}


def _relay_figures(coordinator: dict[str, Any]) -> dict[str, Any]:
    """Per shard: bytes through the relay, the spool's peak, hash requests answered there."""
    relays = coordinator.get("relay") or {}
    return {a: {k: r[k] for k in ("delivered_bytes", "backlog_peak", "hash_local",
                                  "hash_known", "hash_forwarded", "cache_misses")}
            for a, r in relays.items()}


def cold_table(r: dict[str, Any]) -> list[str]:
    return [
        "cold load (ready, s)      by hand  SOLLOL plain  SOLLOL filled  parallel wire limit",
        f"                          {r['by_hand_s']:7}  {r['sollol_plain_s']:12}  "
        f"{r['sollol_filled_s']:13}  {r['wire_limit_parallel_s']:19}",
        f"  filled / by hand: {r['filled_vs_by_hand']}x (goal <= 0.4x); sequential wire limit "
        f"{r['wire_limit_sequential_s']} s",
        f"  of the filled load: fill {r['fill_s']} s (its wire limit {r['fill_wire_limit_s']} s, "
        f"all shards at once), then the coordinator's load {r['load_after_fill_s']} s; the "
        f"gateway filled {sum(r['fill_bytes_per_shard'].values()) / 2**30:.2f} GiB, then the "
        f"coordinator sent {sum(r['coordinator_bytes_per_shard'].values()) / 2**30:.2f} GiB "
        "(the tensors under 10 MiB, one shard after another)",
        f"  SOLLOL, write-behind relay: {r['sollol_relay_s']} s ({r['relay_vs_by_hand']}x by "
        f"hand); relay + filled caches: {r['sollol_relay_filled_s']} s "
        f"({r['relay_filled_vs_by_hand']}x)",
        *(f"    {name} {a}: {v['delivered_bytes'] / 2**30:.2f} GiB sent, spool peak "
          f"{v['backlog_peak'] / 2**30:.2f} GiB, hashes: {v['hash_local']} 'not cached' and "
          f"{v['hash_known']} 'cached' (filled) answered by the relay, "
          f"{v['hash_forwarded']} forwarded" for name in ("relay", "relay_filled")
          for a, v in r[name].items()),
    ]


Section = tuple[Callable[[Bench], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]],
                                                                        list[str]]]
SECTIONS: dict[str, Section] = {"cold": (cold, cold_table)}
SECTIONS.update({"pipeline": (speed_sections.pipeline, speed_sections.pipeline_table),
                 "concurrent": (speed_sections.concurrent, speed_sections.concurrent_table),
                 "draft": (speed_sections.draft, speed_sections.draft_table)})
"""Name -> (measure, table lines). Other sections register here."""


async def run(args: argparse.Namespace) -> dict[str, Any]:
    binaries = find_binaries()
    model = model_file(args.preset)
    results: dict[str, Any] = {"preset": args.preset, "model_bytes": model.stat().st_size,
                               "rate": args.rate, "machine": f"{os.cpu_count()} cores",
                               "date": time.strftime("%F %H:%M UTC", time.gmtime()),
                               "command": " ".join(sys.argv),
                               "load_average": {"start": speed_sections.load_average()}}
    with tempfile.TemporaryDirectory(prefix="sollol-speed-") as tmp, \
            Network(log_dir=Path(tmp) / "logs") as net:
        work = Path(tmp)
        shards = Shards(net, binaries.rpc_server, work)
        shards.limit(args.rate)
        bench = Bench(shards, model, binaries, work, args)
        try:
            for name in args.sections.split(","):
                measure, _ = SECTIONS[name]
                before, started = speed_sections.load_average(), time.perf_counter()
                results[name] = await measure(bench)
                results[name]["_run"] = {"load_average": [before, speed_sections.load_average()],
                                         "seconds": round(time.perf_counter() - started)}
        finally:
            shards.stop()
    results["load_average"]["end"] = speed_sections.load_average()
    return results


def table(results: dict[str, Any]) -> str:
    """Every section's figures, one block each, with the load average around it."""
    load = results["load_average"]
    lines = [f"{results['preset']} ({results['model_bytes'] / 2**30:.2f} GiB) over three "
             f"{results['rate']} shards, {results['date']}, {results['machine']}, load average "
             f"{load['start']} at start, {load.get('end')} at end", results["command"]]
    for name, (_, lines_of) in SECTIONS.items():
        if name in results:
            figures = {k: v for k, v in results[name].items() if k != "_run"}
            run = results[name].get("_run", {})
            lines.append(f"[{name}] {run.get('seconds')} s, load average "
                         f"{' -> '.join(map(str, run.get('load_average', [])))}")
            lines += ["  " + line for line in lines_of(figures)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="7b-q4_0")
    parser.add_argument("--rate", default="1gbit")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated, of: {', '.join(SECTIONS)}")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--ubatch", type=int,
                        help="pipeline: micro-batch size -ub (default 128; 32 for 7b-q4_0)")
    parser.add_argument("--prompt-tokens", type=int,
                        help="pipeline: prompt length (default 4 micro-batches with BOS)")
    parser.add_argument("--shard-cpu", type=float, default=0.5,
                        help="pipeline: cores each shard host may use (cgroup v1 quota)")
    parser.add_argument("--tokens", type=int,
                        help="concurrent: tokens per request (default 32; 16 for 7b-q4_0)")
    parser.add_argument("--draft-tokens", type=int,
                        help="draft: tokens generated (default 32; 16 for 7b-q4_0)")
    args = parser.parse_args()
    speed_sections.fill_defaults(args)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    if not isolated():
        if os.geteuid() != 0:
            raise SystemExit("bench/sharding_speed.py needs root (network namespaces)")
        done = run_isolated([sys.executable, *sys.argv], capture=False)
        raise SystemExit(done.returncode)
    results = asyncio.run(run(args))
    text = json.dumps(results, indent=2)
    print(text)
    print(table(results), file=sys.stderr)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
