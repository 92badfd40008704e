"""Per-node throughput from llama-server's own /metrics, as the dashboard and `sollol status`
show it; and what a backend with no (or broken) metrics does to it: nothing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from sollol.observe.backend_metrics import SAID_NONE, BackendMetrics, parse

LLAMA_PAGE = """# HELP llamacpp:tokens_predicted_total Number of generation tokens processed
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total {tokens}
# TYPE llamacpp:tokens_predicted_seconds_total counter
llamacpp:tokens_predicted_seconds_total {seconds}
# TYPE llamacpp:predicted_tokens_seconds gauge
llamacpp:predicted_tokens_seconds 99.5
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 1
"""


def overview_node(url: str, node_id: str) -> dict:
    nodes = httpx.get(url + "/sollol/overview", timeout=10).json()["nodes"]
    return next(n for n in nodes if n["id"] == node_id)


@pytest.mark.llamacpp
def test_llama_server_throughput_reaches_the_overview(
    llama_server, tiny_model: Path, pool_gateway,
) -> None:
    with_metrics, _ = llama_server(tiny_model, "--metrics", "--alias", "tiny")
    without, _ = llama_server(tiny_model, "--alias", "tiny")
    nodes = [f"openai://{u.removeprefix('http://')}" for u in (with_metrics, without)]
    gateway = pool_gateway(*nodes, plugins=["ollama_pool"], backend_metrics_interval=0.3)
    for _ in range(4):
        reply = httpx.post(gateway.url + "/v1/chat/completions", timeout=120, json={
            "model": "tiny", "max_tokens": 16,
            "messages": [{"role": "user", "content": "hello"}]})
        assert reply.status_code == 200
    ids = [u.removeprefix("http://") for u in (with_metrics, without)]
    deadline = time.monotonic() + 60
    while True:  # the scraper reads every 0.3 s: poll the overview until it has read both
        measured = overview_node(gateway.url, ids[0]).get("throughput") or {}
        bare = overview_node(gateway.url, ids[1]).get("throughput") or {}
        if measured.get("tokens_per_second") and bare.get("error") == SAID_NONE:
            break
        assert time.monotonic() < deadline, (measured, bare)
        time.sleep(0.1)
    assert measured["supported"] is True and measured["tokens_predicted_total"] > 0
    assert bare["supported"] is False  # its /props said so: not asked (or once, before)
    assert bare["tokens_per_second"] is None


def test_throughput_is_the_change_in_tokens_over_the_change_in_busy_time() -> None:
    pages = [LLAMA_PAGE.format(tokens=100, seconds=2.0),
             LLAMA_PAGE.format(tokens=100, seconds=2.0),   # idle: keeps the last figure
             LLAMA_PAGE.format(tokens=400, seconds=3.0),   # 300 tokens in 1 busy second
             LLAMA_PAGE.format(tokens=10, seconds=0.1)]    # restarted: counters began again

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=pages.pop(0))

    scraper = BackendMetrics()
    seen = []

    async def rounds() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            for _ in range(4):
                await scraper.scrape(client, {"n": "http://node"})
                seen.append(scraper.scrapes["n"].tokens_per_second)

    asyncio.run(rounds())
    assert seen == [50.0, 50.0, 300.0, 300.0]


@pytest.mark.parametrize("reply", [
    httpx.Response(200, text="this is not a metrics page {{{"),
    httpx.Response(200, text="# TYPE other_total counter\nother_total 5\n"),
    httpx.Response(200, text="llamacpp:tokens_predicted_total 1e999999\n"),
    httpx.Response(200, content=b"x" * (2 << 20)),
    httpx.Response(500, text="boom"),
    httpx.Response(404, text="no"),
])
def test_a_broken_metrics_page_is_an_error_on_that_node_only(reply) -> None:
    scraper = BackendMetrics()

    async def once() -> None:
        transport = httpx.MockTransport(lambda request: reply)
        async with httpx.AsyncClient(transport=transport) as client:
            await scraper.scrape(client, {"n": "http://node"})

    asyncio.run(once())
    scrape = scraper.scrapes["n"]
    assert scrape.tokens_per_second is None
    assert scrape.error
    assert scraper.as_dict()["n"]["error"] == scrape.error


def test_parse_reads_the_figures_by_name() -> None:
    values = parse(LLAMA_PAGE.format(tokens=7, seconds=0.5))
    assert values["tokens_predicted_total"] == 7
    assert values["tokens_predicted_seconds_total"] == 0.5
    assert values["requests_processing"] == 1



def test_a_node_whose_props_said_no_metrics_is_not_scraped() -> None:
    """`/props` said `endpoint_metrics: false` (the pool's `unserved`): not one request for
    that load, and the overview says why; the other nodes are scraped as before."""
    from types import SimpleNamespace

    from sollol.observe.backend_metrics import SAID_NONE, said_none

    nodes = [{"id": "said-no", "api": "openai", "url": "http://a", "unserved": ["/metrics"]},
             {"id": "no-slots", "api": "openai", "url": "http://b", "unserved": ["/slots"]},
             {"id": "not-learned-yet", "api": "openai", "url": "http://c"}]
    cluster = SimpleNamespace(routes={"pool": SimpleNamespace(snapshot=lambda: {"nodes": nodes})})
    assert said_none(cluster) == {"said-no"}
    asked: list[str] = []

    def reply(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.host)
        return httpx.Response(200, text=LLAMA_PAGE.format(tokens=7, seconds=0.5))

    scraper = BackendMetrics()

    async def rounds() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(reply)) as client:
            for _ in range(3):
                await scraper.scrape(client, {n["id"]: n["url"] for n in nodes},
                                     said_none=said_none(cluster))

    asyncio.run(rounds())
    assert sorted(asked) == ["b", "b", "b", "c", "c", "c"]
    assert scraper.as_dict()["said-no"]["supported"] is False
    assert scraper.as_dict()["said-no"]["error"] == SAID_NONE
    assert scraper.as_dict()["no-slots"]["supported"] is True
