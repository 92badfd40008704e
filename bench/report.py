"""One report from several benchmarks: runs each as its own process and collects what it prints.

    python bench/report.py                      # pool balancing, then batch fan-out
    python bench/report.py batch --out report.md
    python bench/report.py --list

Each benchmark is a script in this folder that prints its results to stdout and exits 0 when
they are valid; this runner adds a heading, the command and the time it took. Running them one
after another (never at once) keeps one from slowing the other down on a small machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES: dict[str, tuple[str, list[str]]] = {
    "pool": ("Pool balancing (bench/pool_balance.py)", ["pool_balance.py"]),
    "batch": ("Batch fan-out (bench/batch.py)", ["batch.py"]),
}
"""Name -> (heading, script and arguments). The default report runs all of them, in order."""


def run_one(name: str, timeout: float) -> tuple[str, bool]:
    heading, args = BENCHES[name]
    command = [sys.executable, str(HERE / args[0]), *args[1:]]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        ok, output = done.returncode == 0, done.stdout.strip()
        if not ok:
            output += f"\n\nexit {done.returncode}; stderr tail:\n{done.stderr[-3000:]}"
    except subprocess.TimeoutExpired:
        ok, output = False, f"timed out after {timeout:.0f}s"
    seconds = time.perf_counter() - started
    shown = " ".join(["python", f"bench/{args[0]}", *args[1:]])
    return (f"## {heading}\n\n`{shown}` ({seconds:.0f} s{'' if ok else ', FAILED'})\n\n"
            f"```\n{output}\n```\n", ok)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: all of {', '.join(BENCHES)})")
    parser.add_argument("--out", type=Path, help="also write the report (markdown) here")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per benchmark")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, (heading, _cmd) in BENCHES.items():
            print(f"{name:8s} {heading}")
        return 0
    unknown = [n for n in args.names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHES)}")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    sections, all_ok = [f"# SOLLOL benchmarks ({stamp})\n"], True
    for name in args.names or list(BENCHES):
        section, ok = run_one(name, args.timeout)
        print(section, flush=True)
        sections.append(section)
        all_ok = all_ok and ok
    if args.out:
        args.out.write_text("\n".join(sections))
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
