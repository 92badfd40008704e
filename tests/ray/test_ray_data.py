"""Batch jobs on Ray Data through SOLLOL's gateway (`sollol.ray`, docs/ray.md): a real Ray cluster,
a real gateway with an access key, emulated pool nodes with injected faults.

Counting at the nodes: a node logs each generation it starts (`request_log`), so every row's
prompt must be generated exactly once over all nodes, and the inference requests the nodes saw
must be the rows plus the failures they injected (each one retried by the gateway or the helper).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas
import pyarrow
import pytest
import ray
import ray.data

import sollol.ray
from sollol.errors import SollolError, Unauthorized
from sollol.testing.ray_cluster import RAY_ENV, RayCluster

MODEL = "llama3.2:1b"
KEY = "sollol-ray-batch-key-0123456789"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "ray.md"
OPTIONS = {"options": {"temperature": 0}}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real Ray cluster of two raylets (sollol.testing.ray_cluster, as the plugin's tests use),
    this process its driver; stopped with every process it started when the module ends. Two
    logical CPUs a node: the map actors take a quarter each, so reading blocks never starves."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in RAY_ENV.items():
            patch.setenv(key, value)
        cluster = RayCluster.start(tmp_path_factory.mktemp("ray-data"), workers=1, num_cpus=2)
        try:
            ray.init(address=cluster.address, namespace="sollol-ray-data", log_to_driver=False,
                     logging_level="ERROR")
            yield ray
        finally:
            ray.shutdown()
            cluster.stop()
    assert not cluster.leftovers()


def _nodes(emulator: Any, tmp_path: Path, count: int) -> list[Any]:
    return [emulator(models=[MODEL], response_tokens=4, parallel=8,
                     request_log=str(tmp_path / f"node{i}.log")) for i in range(count)]


def _generated(tmp_path: Path) -> Counter[str]:
    """How often each prompt was generated, over every node's log (a chat's prompt is its
    rendered messages: `user: ...`)."""
    seen: Counter[str] = Counter()
    for log in tmp_path.glob("node*.log"):
        for line in log.read_text().splitlines():
            seen[json.loads(line.split("\t", 1)[1])] += 1
    return seen


def _requests(nodes: Sequence[Any], path: str = "/api/chat") -> int:
    return sum(node.stats()["requests"].get(path, 0) for node in nodes)


def _injected(nodes: Sequence[Any]) -> int:
    return sum(sum(node.stats()["injected"].values()) for node in nodes)


def _prompts(count: int) -> list[dict[str, Any]]:
    return [{"id": i, "prompt": f"row {i}: say something"} for i in range(count)]


def test_a_ray_data_job_answers_every_row_once_in_order(local_ray, emulator, pool_gateway,
                                                        tmp_path) -> None:
    rows, faults = 300, 12
    nodes = _nodes(emulator, tmp_path, 3)
    nodes[2].set_faults(error_status=500, error_count=faults)
    gateway = pool_gateway(*(n.address for n in nodes), api_keys=[KEY])

    dataset = sollol.ray.answer(ray.data.from_items(_prompts(rows)), gateway.url, MODEL,
                                api_key=KEY, actors=2, batch_size=25, fields=OPTIONS)
    out = dataset.take_all()

    assert [r["id"] for r in out] == list(range(rows))  # every row once, in input order
    assert all(r["error"] is None and r["response"] for r in out), \
        [r for r in out if r["error"]][:3]
    assert {r["route"] for r in out} == {"pool"}
    assert {r["backend"] for r in out} <= {n.address for n in nodes}
    assert len({r["backend"] for r in out}) >= 2  # the pool spread the job
    generated = _generated(tmp_path)
    assert sorted(generated) == sorted(f"user: {r['prompt']}" for r in out)  # chat, rendered
    assert set(generated.values()) == {1}
    injected = _injected(nodes)  # fewer than `faults` when the pool ejected the node early
    assert 1 <= injected <= faults
    assert _requests(nodes) == rows + injected  # each failure retried once, nothing else
    assert sum(r["attempts"] for r in out) == rows  # the gateway retried, not the helper


def test_streamed_rows_retried_by_the_helper_and_bad_rows_recorded(local_ray, emulator,
                                                                   pool_gateway,
                                                                   tmp_path) -> None:
    """One node, so the gateway has nowhere to retry: its 5xx reach the helper, which retries
    the row itself; rows without a usable prompt come back with an error, never dropped."""
    rows, faults = 60, 5
    (node,) = _nodes(emulator, tmp_path, 1)
    node.set_faults(error_status=500, error_count=faults)
    gateway = pool_gateway(node.address, api_keys=[KEY], pool_eject_seconds=0.2)
    items = [*_prompts(rows), {"id": rows, "prompt": None}, {"id": rows + 1, "prompt": ""}]

    dataset = sollol.ray.answer(ray.data.from_items(items), gateway.url, MODEL, api_key=KEY,
                                actors=2, batch_size=16, stream=True, retries=8, backoff=0.05,
                                fields=OPTIONS)
    out = dataset.take_all()

    assert [r["id"] for r in out] == list(range(rows + 2))
    answered, bad = out[:rows], out[rows:]
    assert all(r["error"] is None and r["response"] and r["route"] == "pool"
               and r["backend"] == node.address for r in answered)
    assert sum(r["attempts"] for r in answered) >= rows + faults  # the helper's retries
    assert set(_generated(tmp_path).values()) == {1} and len(_generated(tmp_path)) == rows
    assert _requests([node]) == rows + faults == rows + _injected([node])
    assert bad[0]["error"] == "column 'prompt' is missing" and bad[0]["attempts"] == 0
    assert bad[1]["error"] == "column 'prompt' is empty" and bad[1]["response"] is None


def test_a_row_that_fails_after_its_retries_is_recorded(emulator, pool_gateway,
                                                        tmp_path) -> None:
    """The callable class on its own (no Ray needed): per-row errors with their attempts."""
    (node,) = _nodes(emulator, tmp_path, 1)
    gateway = pool_gateway(node.address, api_keys=[KEY], pool_eject_seconds=0.2)
    answers = sollol.ray.Answers(gateway.url, MODEL, api_key=KEY, retries=2, backoff=0.01)
    try:
        good = answers({"id": [1, 2], "prompt": ["one", "two"]})
        assert good["error"] == [None, None] and all(good["response"])
        assert good["id"] == [1, 2] and good["attempts"] == [1, 1]
        node.set_faults(error_status=500)  # every request fails from now on
        failed = answers({"prompt": ["three", 4]})
        assert failed["attempts"] == [3, 0] and failed["response"] == [None, None]
        assert failed["error_type"][0] in ("BackendError", "NoRouteAvailable")
        assert failed["error"][1] == "column 'prompt' must be a string, not int"
        node.clear_faults()
        missing = sollol.ray.Answers(gateway.url, "no-such-model", api_key=KEY)
        try:  # a request error is the row's, at once: not retried
            lost = missing({"prompt": ["x"]})
        finally:
            missing.close()
        assert lost["error_type"] == ["ModelNotFound"] and lost["attempts"] == [1]
        with pytest.raises(ValueError, match=r"no column 'prompt' \(columns: text\)"):
            answers({"text": ["x"]})
        with pytest.raises(ValueError, match="already has column"):
            answers({"prompt": ["x"], "response": ["y"]})
        assert answers({"prompt": []})["response"] == []
        for batch in (pandas.DataFrame({"id": [7, 8], "prompt": ["five", None]}),
                      pyarrow.table({"id": [7, 8], "prompt": ["five", None]})):
            other = answers(batch)  # Ray Data's other batch formats (pandas: NaN for None)
            assert other["id"] == [7, 8] and other["response"][0]
            assert other["error"] == [None, "column 'prompt' is missing"]
        with pytest.raises(TypeError, match="batch of columns"):
            answers(["five"])
    finally:
        answers.close()
    wrong = sollol.ray.Answers(gateway.url, MODEL, api_key="not-the-key-0123456789")
    try:  # a wrong key is the job's error, not every row's
        with pytest.raises(Unauthorized):
            wrong({"prompt": ["x"]})
    finally:
        wrong.close()


def test_without_ray_the_error_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what a plain `pip install sollol` has
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(SollolError, match=r"pip install 'sollol\[ray\]'"):
        sollol.ray.require_ray()


def test_rays_own_http_processor_answers_rows_but_not_where(local_ray, emulator, pool_gateway,
                                                            tmp_path) -> None:
    """The other way docs/ray.md weighs: Ray's `HttpRequestProcessorConfig` at the gateway's
    OpenAI endpoint. Every row is answered once, but a row only sees the reply's body: which
    route and backend served it stays in the response headers, out of its reach."""
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    rows = 100
    nodes = _nodes(emulator, tmp_path, 2)
    gateway = pool_gateway(*(n.address for n in nodes), api_keys=[KEY])
    config = HttpRequestProcessorConfig(
        url=f"{gateway.url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
        max_retries=3, base_retry_wait_time_in_s=0.05, batch_size=25, concurrency=2)
    processor = build_processor(
        config,
        preprocess=lambda row: {"id": row["id"], "prompt": row["prompt"], "payload": {
            "model": MODEL, "temperature": 0,
            "messages": [{"role": "user", "content": row["prompt"]}]}},
        postprocess=lambda row: {"id": row["id"], "fields": sorted(row["http_response"]),
                                 "answer": row["http_response"]["choices"][0]["message"][
                                     "content"]})
    dataset = processor(ray.data.from_items(_prompts(rows)))
    dataset.context.execution_options.preserve_order = True
    out = dataset.take_all()

    assert [r["id"] for r in out] == list(range(rows))
    assert all(r["answer"] for r in out)
    assert set(_generated(tmp_path).values()) == {1} and len(_generated(tmp_path)) == rows
    assert _requests(nodes) == rows
    assert not {"route", "backend"} & {f for r in out for f in r["fields"]}


def test_the_docs_example_runs_as_written(emulator, pool_gateway, processes, tmp_path) -> None:
    """docs/ray.md's first example, run as a script against a gateway with a key; its
    `ray.init()` starts a Ray of its own (RAY_ADDRESS=local), which ends with the script."""
    section = DOCS.read_text().split("## Batch jobs on Ray Data", 1)[1]
    script = tmp_path / "example.py"
    script.write_text(section.split("```python\n", 1)[1].split("```", 1)[0])
    nodes = _nodes(emulator, tmp_path, 2)
    gateway = pool_gateway(*(n.address for n in nodes), api_keys=[KEY])
    temp = tempfile.mkdtemp(prefix="sollol-ray-", dir="/tmp")
    env = {**os.environ, "SOLLOL_GATEWAY": gateway.url, "SOLLOL_KEY": KEY,
           "RAY_ADDRESS": "local", "RAY_TMPDIR": temp, "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        proc = processes.start("ray-docs-example", [sys.executable, str(script)], env=env)
        assert proc.popen.wait(300) == 0, proc.log_text()[-3000:]
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    output = proc.log_text()
    assert "answered 200 rows, 0 failed" in output, output[-3000:]
    assert any(line.startswith("0 pool 127.0.0.1:") for line in output.splitlines()), output
    assert _requests(nodes) == 200 and len(_generated(tmp_path)) == 200
