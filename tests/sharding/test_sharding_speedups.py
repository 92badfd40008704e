"""Sharded models at speed, with real rpc-servers and coordinators on loopback: pipeline
parallelism reported per coordinator, several sequences at once on one coordinator (slots and a
bounded queue), and a draft model for speculative decoding checked for its vocabulary."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from sollol_plugins.llamacpp_rpc.shard_status import render

from sollol.errors import NoRouteAvailable, Overloaded
from sollol.models import RouteRequest
from sollol.routes import Outcome

pytestmark = [pytest.mark.llamacpp, pytest.mark.slow]


async def complete(base_url: str, tokens: int = 24) -> dict:
    async with httpx.AsyncClient(timeout=120, trust_env=False) as client:
        response = await client.post(base_url + "/v1/completions", json={
            "prompt": "the shard layer", "max_tokens": tokens, "temperature": 0,
            "ignore_eos": True})
    response.raise_for_status()
    return response.json()


async def test_every_layer_on_shards_reports_pipeline_on(
    rpc_servers, sharding_route, tiny_model: Path,
) -> None:
    route = await sharding_route([a for a, _ in rpc_servers(2)], rpc_placement="all")
    lease = await route.acquire(RouteRequest(model=str(tiny_model)))
    lease.release(Outcome(ok=True))
    coord = route.supervisor.coordinators[str(tiny_model)]
    assert "pipeline parallelism enabled" in coord.log_text()
    (shown,) = route.snapshot()["coordinators"]
    assert shown["pipeline"] == "on" and shown["pipeline_expected"] == "on"
    assert "pipeline" not in shown["placement"]["reason"]  # nothing chosen costs it
    assert "pipeline parallelism: on" in render(dict(route.snapshot()))


async def test_a_placement_on_one_device_says_it_costs_pipeline_parallelism(
    rpc_servers, sharding_route, tiny_model: Path,
) -> None:
    route = await sharding_route([a for a, _ in rpc_servers(2)])  # "fewest": one is enough
    lease = await route.acquire(RouteRequest(model=str(tiny_model)))
    lease.release(Outcome(ok=True))
    coord = route.supervisor.coordinators[str(tiny_model)]
    assert coord.plan.devices == 1
    (shown,) = route.snapshot()["coordinators"]
    assert shown["pipeline"] == "off: 1 RPC device(s) (it needs two or more)"
    assert shown["placement"]["reason"].endswith(
        "; on one RPC device, so without pipeline parallelism (it needs two)")


async def test_layers_kept_on_the_gateway_report_pipeline_off_with_why(
    rpc_servers, sharding_route, tiny_model: Path,
) -> None:
    from test_rpc_placement import model_needs

    route = await sharding_route([a for a, _ in rpc_servers(2)], rpc_placement="all",
                                 rpc_local_memory=str(model_needs(tiny_model) // 2))
    lease = await route.acquire(RouteRequest(model=str(tiny_model)))
    lease.release(Outcome(ok=True))
    coord = route.supervisor.coordinators[str(tiny_model)]
    assert coord.plan.local_layers > 0
    assert "pipeline parallelism enabled" not in coord.log_text()
    (shown,) = route.snapshot()["coordinators"]
    why = f"{coord.plan.local_layers} layer(s) kept on the gateway machine (rpc_local_memory)"
    assert shown["pipeline"] == f"off: {why}"
    assert f"this costs pipeline parallelism: {why}" in shown["placement"]["reason"]
    assert f"pipeline parallelism: off: {why}" in render(dict(route.snapshot()))


async def test_concurrent_requests_share_the_slots_and_the_queue_is_bounded(
    rpc_servers, sharding_route, tiny_model: Path,
) -> None:
    route = await sharding_route([a for a, _ in rpc_servers(2)], rpc_parallel=4,
                                 rpc_queue_size=1, rpc_wait_timeout=60.0)
    busy: list[int] = []

    async def one() -> tuple[float, float, dict]:
        lease = await route.acquire(RouteRequest(model=str(tiny_model)))
        try:
            started = time.monotonic()
            answer = await complete(lease.base_url, tokens=200)
            return started, time.monotonic(), answer
        finally:
            lease.release(Outcome(ok=True))

    async def watch_slots(url: str) -> None:
        async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
            while True:
                slots = (await client.get(url + "/slots")).json()
                busy.append(sum(1 for s in slots if s.get("is_processing")))
                await asyncio.sleep(0.02)

    warm = await route.acquire(RouteRequest(model=str(tiny_model)))
    warm.release(Outcome(ok=True))
    coord = route.supervisor.coordinators[str(tiny_model)]
    assert "--parallel" in coord.proc.args and coord.slots == 4
    watcher = asyncio.create_task(watch_slots(coord.base_url))
    try:
        runs = await asyncio.gather(*(one() for _ in range(4)))
    finally:
        watcher.cancel()
    assert all(r[2]["usage"]["completion_tokens"] == 200 for r in runs)
    assert max(r[0] for r in runs) < min(r[1] for r in runs)  # all four ran at the same time
    assert max(busy) >= 2  # llama-server itself ran several sequences at once

    held = [await route.acquire(RouteRequest(model=str(tiny_model))) for _ in range(4)]
    waiter = asyncio.create_task(route.acquire(RouteRequest(model=str(tiny_model))))
    while coord.queued < 1:
        await asyncio.sleep(0.01)
    with pytest.raises(Overloaded, match="rpc_parallel") as refused:
        await route.acquire(RouteRequest(model=str(tiny_model)))
    assert refused.value.retry_after > 0
    slots = route.snapshot()["coordinators"][0]["slots"]
    assert slots == {"total": 4, "busy": 4, "queued": 1, "refused": 1}
    assert "slots: 4/4 busy, 1 queued, 1 refused" in render(dict(route.snapshot()))
    held[0].release(Outcome(ok=True))
    fifth = await asyncio.wait_for(waiter, 30)  # a freed slot goes to the waiting request
    for lease in [*held[1:], fifth]:
        lease.release(Outcome(ok=True))
    assert coord.queued == 0 and coord.in_flight == 0


async def test_a_draft_with_another_vocabulary_is_refused(
    rpc_servers, sharding_route, tiny_model: Path, tmp_path: Path,
) -> None:
    from sollol.testing.tiny_models import make_tiny_model

    other = make_tiny_model(tmp_path / "other-vocab.gguf", layers=2, vocab_size=1300)
    route = await sharding_route([a for a, _ in rpc_servers(1)],
                                 rpc_draft_models={str(tiny_model): str(other)})
    with pytest.raises(NoRouteAvailable, match="does not share its vocabulary: the target "
                                               "has 1192 tokens, the draft 1300"):
        await route.acquire(RouteRequest(model=str(tiny_model)))
    assert not route.supervisor.coordinators


async def test_a_draft_with_the_same_vocabulary_drafts_on_the_gateway(
    rpc_servers, sharding_route, tiny_model: Path, tmp_path: Path,
) -> None:
    from sollol.testing.tiny_models import make_tiny_model

    draft = make_tiny_model(tmp_path / "draft.gguf", layers=2, seed=7)
    route = await sharding_route([a for a, _ in rpc_servers(2)],
                                 rpc_draft_models={str(tiny_model): str(draft)})
    lease = await route.acquire(RouteRequest(model=str(tiny_model)))
    try:
        answer = await complete(lease.base_url, tokens=32)
    finally:
        lease.release(Outcome(ok=True))
    assert answer["usage"]["completion_tokens"] == 32
    assert answer["timings"]["draft_n"] > 0  # the draft proposed tokens the shards checked
    (shown,) = route.snapshot()["coordinators"]
    assert shown["placement"]["draft"] == str(draft)
    assert "draft model" in shown["placement"]["reason"]


def test_past_the_slots_and_the_queue_the_gateway_answers_429_json(
    rpc_servers, sharding_gateway, tiny_model: Path, isolated_config: Path,
) -> None:
    """One slot, no queue: while a streamed request holds the slot, the next gets 429 with a
    JSON error naming the settings; `sollol shard status` and /sollol/state show the numbers."""
    from click.testing import CliRunner

    from sollol.cli import build_cli

    # a context long enough that the held request is still generating (~1,000 tokens/s here)
    # when the second one comes; closing its stream ends it
    gateway = sharding_gateway([a for a, _ in rpc_servers(2)], rpc_parallel=1,
                               rpc_queue_size=0, rpc_ctx_size=32768)
    body = {"model": str(tiny_model), "prompt": "the shard layer", "stream": True,
            "options": {"num_predict": 30000, "temperature": 0}}
    with httpx.Client(timeout=120, trust_env=False) as client:
        warm = client.post(gateway.url + "/api/generate", json={
            **body, "stream": False, "options": {"num_predict": 1}})
        assert warm.status_code == 200  # the coordinator is up
        with client.stream("POST", gateway.url + "/api/generate", json=body) as held:
            assert held.status_code == 200
            lines = held.iter_lines()
            while '"response":""' in next(lines).replace(" ", ""):
                pass  # until it generates: the slot is taken
            refused = client.post(gateway.url + "/api/generate", json={**body, "stream": False})
            state = client.get(gateway.url + "/sollol/state").json()
            isolated_config.parent.mkdir(parents=True, exist_ok=True)
            isolated_config.write_text('plugins = ["llamacpp_rpc"]\n')
            status = CliRunner().invoke(build_cli(), ["shard", "status", "--url", gateway.url])
    assert refused.status_code == 429 and refused.headers.get("retry-after")
    assert "rpc_parallel" in refused.json()["error"]
    assert "rpc_queue_size" in refused.json()["error"]
    (coord,) = state["routes"]["sharding"]["coordinators"]
    assert coord["slots"] == {"total": 1, "busy": 1, "queued": 0, "refused": 1}
    assert coord["pipeline"] == "off: 1 RPC device(s) (it needs two or more)"  # fewest: one
    assert "slots: 1/1 busy, 0 queued, 1 refused (429)" in status.output
    assert "pipeline parallelism: off: 1 RPC device(s)" in status.output


def test_what_turns_pipeline_parallelism_off_is_named() -> None:
    from sollol_plugins.llamacpp_rpc.pipeline import from_log, predict

    assert predict(3, 0, 32, ()) == ""
    assert predict(1, 0, 32, ()) == "1 RPC device(s) (it needs two or more)"
    assert predict(3, 0, 32, ["-ot", "ffn=CPU"]) == \
        "tensor overrides in rpc_coordinator_args (-ot)"
    assert predict(3, 0, 32, ["-nkvo"]) == "KV cache not offloaded (-nkvo in rpc_coordinator_args)"
    assert predict(3, 0, 32, ["--split-mode=row"]) == \
        "split mode 'row' (rpc_coordinator_args; it needs 'layer')"
    assert predict(3, 0, 32, ["-ngl", "20"]) == \
        "not every layer offloaded (-ngl 20 in rpc_coordinator_args)"
    assert predict(3, 0, 32, ["-ngl", "99"]) == ""
    assert predict(3, 4, 32, ()) == "4 layer(s) kept on the gateway machine (rpc_local_memory)"
    assert from_log("llama_context: pipeline parallelism enabled", "") == "on"
    assert from_log("llama_context: pipeline parallelism enabled\nsched_reserve: compute buffer "
                    "allocation failed, retrying without pipeline parallelism", "") == \
        "off: its compute buffers did not fit, llama.cpp retried without it"
    assert from_log("", "x").startswith("off: x")
