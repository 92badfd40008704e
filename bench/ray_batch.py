"""Ray Data batch job through the gateway: `sollol.ray` against Ray's own HTTP request processor.

Three emulated Ollama nodes (in this process, `--tps` tokens per second, four slots each) behind
a gateway with an access key, and a local Ray (`address="local"`, 4 logical CPUs). The same rows
go through both ways, two Ray actors each, and the wall time of the job is measured (Ray's start
is not in it; each job's actor start is):

- `sollol.ray`: `sollol.ray.answer(...)`, each actor sends `--in-flight` rows of a batch at once;
- `ray.data.llm`: `HttpRequestProcessorConfig` at `/v1/chat/completions` (Ray awaits each row's
  request before sending the next one of its batch).

    python bench/ray_batch.py                   # 300 rows
    python bench/ray_batch.py --rows 100 --json out.json
Everything it starts it stops. Results: docs/ray.md ("Why a SOLLOL helper").
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from typing import Any

import ray
import ray.data
from ray.data.llm import HttpRequestProcessorConfig, build_processor

import sollol.ray
from sollol.core.runtime import ClusterRuntime
from sollol.gateway import GatewayThread
from sollol.testing.emulator import EmulatorNode

MODEL = "llama3.2:1b"
KEY = "sollol-ray-bench-key-0123456789"


def _rows(count: int) -> list[dict[str, Any]]:
    return [{"id": i, "prompt": f"row {i}: say something"} for i in range(count)]


def _payload(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "payload": {"model": MODEL, "messages": [
        {"role": "user", "content": row["prompt"]}]}}


def _answer(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "answer": row["http_response"]["choices"][0]["message"]["content"]}


def run_helper(url: str, rows: int, in_flight: int) -> float:
    started = time.perf_counter()
    out = sollol.ray.answer(ray.data.from_items(_rows(rows)), url, MODEL, api_key=KEY,
                            actors=2, batch_size=25, in_flight=in_flight).take_all()
    seconds = time.perf_counter() - started
    assert len(out) == rows and all(r["error"] is None for r in out)
    return seconds


def run_ray_http(url: str, rows: int) -> float:
    config = HttpRequestProcessorConfig(url=f"{url}/v1/chat/completions",
                                        headers={"Authorization": f"Bearer {KEY}"},
                                        max_retries=3, batch_size=25, concurrency=2)
    processor = build_processor(config, preprocess=_payload, postprocess=_answer)
    started = time.perf_counter()
    dataset = processor(ray.data.from_items(_rows(rows)))
    out = dataset.take_all()
    seconds = time.perf_counter() - started
    assert len(out) == rows and all(r["answer"] for r in out)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--tps", type=float, default=100.0, help="tokens/s of each node")
    parser.add_argument("--tokens", type=int, default=10, help="tokens per reply")
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    nodes = [EmulatorNode(models=[MODEL], tokens_per_second=args.tps, parallel=4,
                          response_tokens=args.tokens).start() for _ in range(3)]
    gateway = GatewayThread(ClusterRuntime.from_config(overrides={
        "ollama_nodes": [n.address for n in nodes], "api_keys": [KEY]})).start()
    temp = tempfile.mkdtemp(prefix="sollol-ray-", dir="/tmp")
    try:
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
                 _temp_dir=temp)
        ray.data.DataContext.get_current().enable_progress_bars = False
        ideal = args.rows * args.tokens / args.tps / (3 * 4)
        results = {"rows": args.rows, "ideal_s": round(ideal, 2),
                   "sollol_ray_s": round(run_helper(gateway.url, args.rows, args.in_flight), 2),
                   "ray_http_processor_s": round(run_ray_http(gateway.url, args.rows), 2)}
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        gateway.stop()
        for node in nodes:
            node.stop()
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
