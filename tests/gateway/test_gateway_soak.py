"""A scaled-down soak: 2,000 sequential requests and 200 client disconnects mid-stream through
the gateway leave its memory, file descriptors, tasks and upstream connections flat.

(The full-size run, 20,000 requests and 2,000 disconnects, is `python bench/load.py`.)
Bounds are generous on purpose: a leak per request would exceed them by far; no clock is read.
"""

from __future__ import annotations

import concurrent.futures

import httpx

from sollol.core.router import POOL
from sollol.testing.gauges import read

REQUESTS = 2_000
DISCONNECTS = 200
CONCURRENCY = 4


def test_requests_and_disconnects_leave_the_gateway_flat(emulator_process, pool_gateway):
    fast = emulator_process("fast", flags=["--parallel", "0"])
    # streams of 100 tokens at 50/s: a client that hangs up after the first chunk cuts them
    slow = emulator_process("slow", flags=["--parallel", "0", "--tokens-per-second", "50",
                                           "--response-tokens", "100"])
    ports = [int(u.rsplit(":", 1)[1]) for u in (fast, slow)]
    gw = pool_gateway(*(u.removeprefix("http://") for u in (fast, slow)),
                      pool_node_concurrency=CONCURRENCY)
    loop = gw.gateway.cluster.routes[POOL]._task.get_loop()
    body = {"model": "fast", "prompt": "x", "stream": False}
    with httpx.Client(base_url=gw.url, timeout=60) as client:
        for _ in range(200):  # warm up: imports, caches, the connection pool
            assert client.post("/api/generate", json=body).status_code == 200
        before = read(loop, ports)
        for _ in range(REQUESTS):
            assert client.post("/api/generate", json=body).status_code == 200
    middle = read(loop, ports)

    def disconnect(client: httpx.Client) -> None:
        # closing a response before its end closes its connection: the gateway sees the client
        # hang up mid-stream
        with client.stream("POST", "/api/generate", json={"model": "slow", "prompt": "x"}) as reply:
            assert reply.status_code == 200
            next(reply.iter_lines())

    with httpx.Client(base_url=gw.url, timeout=60) as client, \
            concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: disconnect(client), range(DISCONNECTS)))
    # every cut stream was also cut upstream: the node is left with nothing to send
    _wait_idle(gw.url, slow)
    cut = httpx.get(slow + "/_emulator/stats").json()["requests"]["/api/generate"]
    after = read(loop, ports)
    growth = after - before
    print(f"\nsoak: {REQUESTS} requests then {DISCONNECTS} disconnects: growth "
          f"{growth.as_dict()} (requests alone: {(middle - before).as_dict()})")
    assert cut == DISCONNECTS
    assert growth.fds <= 20 and growth.tasks <= 10
    assert growth.rss_kib < 16 * 1024
    assert after.upstream <= 2 * CONCURRENCY  # kept-alive connections only, no leaked ones


def test_a_burst_over_the_queue_limit_gets_429s_with_retry_after_never_a_5xx(
        emulator_process, pool_gateway):
    slow = emulator_process("m", flags=["--parallel", "0", "--tokens-per-second", "100",
                                        "--response-tokens", "20"])
    gw = pool_gateway(slow.removeprefix("http://"), pool_node_concurrency=2, pool_queue_size=4)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}

    def one(client: httpx.Client) -> tuple[int, str | None, bool]:
        with client.stream("POST", "/api/chat", json=body) as reply:
            lines = [line for line in reply.iter_lines() if line]
            complete = reply.status_code == 200 and '"done":true' in lines[-1].replace(" ", "")
            return reply.status_code, reply.headers.get("retry-after"), complete

    limits = httpx.Limits(max_connections=60)
    with httpx.Client(base_url=gw.url, timeout=120, limits=limits) as client, \
            concurrent.futures.ThreadPoolExecutor(60) as pool:
        results = list(pool.map(lambda _: one(client), range(60)))
    statuses = sorted({status for status, _, _ in results})
    assert set(statuses) <= {200, 429}, statuses
    assert all(complete for status, _, complete in results if status == 200)
    assert all(int(retry) >= 1 for status, retry, _ in results if status == 429)
    assert sum(status == 200 for status, _, _ in results) >= 6  # 2 running + 4 queued
    assert any(status == 429 for status, _, _ in results)


def _wait_idle(gateway: str, node: str) -> None:
    """Until the node serves nothing and the pool has nothing in flight (bounded by the number
    of polls, not by a clock)."""
    import time

    for _ in range(600):
        nodes = httpx.get(gateway + "/sollol/nodes").json()["nodes"]
        # (the emulator counts the stats request itself as in flight)
        if (httpx.get(node + "/_emulator/stats").json()["in_flight"] <= 1
                and all(n["in_flight"] == 0 for n in nodes)):
            return
        time.sleep(0.05)
    raise AssertionError("the gateway never went idle after the disconnects")
