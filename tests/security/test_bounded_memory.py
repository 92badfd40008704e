"""Everything the gateway keeps per request or per model name is bounded: a flood of requests
with multi-megabyte model names and unknown models leaves a running gateway's memory flat.

The gateway runs as `sollol run` in its own process (in front of an emulated Ollama node); its
resident set size is read from /proc/<pid>/status after a warm-up and again after many more
requests. No clock is involved: the bound is on bytes, generous against allocator noise and far
below what keeping even a few of the names would cost.
"""

from __future__ import annotations

import os
import sys

import httpx

from sollol.core.processes import free_port, wait_http
from sollol.testing.gauges import rss_bytes

HUGE = 2 * 1024 * 1024  # characters in one model name
WARMUP_ROUNDS = 10
WARMUP_EVENTS = 1200  # past the event log's 1000: its growth is done before measuring
ROUNDS = 80
GROWTH_LIMIT = 24 * 1024 * 1024  # keeping 12 of the 160+ huge names would already pass it


def fill_events(client: httpx.Client, url: str, count: int) -> None:
    """Cheap requests for unknown models, each one a route event."""
    for i in range(count):
        reply = client.post(url + "/api/generate", json={"model": f"warm-{i}-" + "w" * 400,
                                                         "prompt": "x"})
        assert reply.status_code == 404


def flood(client: httpx.Client, url: str, first: int, rounds: int) -> None:
    """Requests naming huge and unknown models on every endpoint that takes a model name."""
    for i in range(first, first + rounds):
        huge = f"{i}-" + "x" * HUGE
        unknown = f"unknown-{i}-" + "y" * 400
        messages = [{"role": "user", "content": "hi"}]
        for path, body, status in [
            ("/api/chat", {"model": huge, "messages": messages}, 400),
            ("/v1/chat/completions", {"model": huge, "messages": messages}, 400),
            ("/api/pull", {"model": huge}, 400),
            ("/api/show", {"model": huge}, 400),
            ("/api/chat", {"model": unknown, "messages": messages}, 404),
            ("/api/generate", {"model": unknown, "prompt": "x"}, 404),
            ("/v1/chat/completions", {"model": unknown, "messages": messages}, 404),
            ("/api/show", {"model": unknown}, 404),
        ]:
            reply = client.post(url + path, json=body)
            assert reply.status_code == status, (path, reply.status_code, reply.text[:300])
            assert len(reply.content) < 4096  # an error never echoes the whole name
        reply = client.get(url + "/sollol/route", params={"model": unknown})
        assert reply.status_code == 404


def test_memory_stays_flat_under_huge_and_unknown_model_names(processes, isolated_config,
                                                               emulator):
    node = emulator(models=["m"])
    port = free_port()
    proc = processes.start("sollol-run", [
        sys.executable, "-m", "sollol", "run", "--port", str(port)],
        env={**os.environ, "SOLLOL_OLLAMA_NODES": node.address,
             "SOLLOL_MODEL_SHARDING_ENABLED": "false"})
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/api/version", process=proc, timeout=120)
    with httpx.Client(timeout=120) as client:
        ok = client.post(url + "/api/chat", json={
            "model": "m", "stream": False, "messages": [{"role": "user", "content": "hi"}]})
        assert ok.status_code == 200
        flood(client, url, 0, WARMUP_ROUNDS)
        fill_events(client, url, WARMUP_EVENTS)
        before = rss_bytes(proc.pid)
        flood(client, url, WARMUP_ROUNDS, ROUNDS)
        after = rss_bytes(proc.pid)
        events = client.get(url + "/sollol/events", params={"limit": 5000}).json()["events"]
    print(f"gateway RSS after warm-up {before / 2**20:.1f} MiB, after {ROUNDS} more rounds "
          f"{after / 2**20:.1f} MiB")
    assert after - before < GROWTH_LIMIT, f"RSS grew by {(after - before) / 2**20:.1f} MiB"
    assert len(events) <= 1000
    assert max(len(e["model"] or "") for e in events) <= 512
