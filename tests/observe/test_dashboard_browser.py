"""The dashboard in a real headless Chromium, against a gateway with emulated pool nodes and a
real sharded coordinator: rows, layer bars, a node going down, live requests, reconnecting.

Screenshots go to the test's tmp folder; with UPDATE_DOCS_SCREENSHOTS=1 they also replace
docs/images/dashboard-*.png (what docs/dashboard.md shows).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sollol.core.runtime import ClusterRuntime
from sollol.gateway import GatewayThread

pytestmark = [pytest.mark.llamacpp, pytest.mark.slow]
POOL_MODEL = "llama3.2:1b"
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
WAIT_MS = 60_000
"""The longest any page condition is awaited (polling, never a fixed sleep); a slow shared
machine needs the room, a passing run takes a fraction of it."""


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    """A fresh page that fails the test on any script error or console error (a CSP violation
    included)."""
    # dark, as an operator's second screen usually is (the page follows the system's scheme)
    context = chromium.new_context(viewport={"width": 1440, "height": 1000}, color_scheme="dark")
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
            if msg.type == "error" else None)
    page.on("request", lambda request: None if request.url.startswith("http://127.0.0.1")
            else problems.append(f"request off the gateway: {request.url}"))
    try:
        yield page
    finally:
        context.close()
    # a gateway cut on purpose makes the browser log the failed stream: that one is expected
    unexpected = [p for p in problems if "/sollol/stream" not in p
                  and "ERR_CONNECTION_REFUSED" not in p]
    assert not unexpected, unexpected


def hybrid_gateway(nodes: list[str], rpc: list[str], state: Path, llama_dir: Path,
                   port: int = 0) -> GatewayThread:
    """Pool and sharding both on; `tiny` is pinned to sharding, the emulated model to the pool."""
    cluster = ClusterRuntime.from_config(overrides={
        "plugins": ["ollama_pool", "llamacpp_rpc", "policies"],
        "task_distribution_enabled": True, "model_sharding_enabled": True,
        "ollama_nodes": nodes, "rpc_backends": rpc, "rpc_state_dir": str(state),
        "llama_cpp_dir": str(llama_dir), "health_interval": 1.0,
        "rpc_placement": "all",  # the tiny model fits one rpc-server: spread it to show bars
        "routing_policy": "pinned",
        "policy_settings": {"pinned": {"models": {"tiny": "sharding", POOL_MODEL: "pool"}}},
    })
    return GatewayThread(cluster, port=port).start()


def shoot(page: Any, tmp_path: Path, name: str, height: int | None = None) -> Path:
    """A PNG of the page (its top `height` pixels, or all of it)."""
    path = tmp_path / f"dashboard-{name}.png"
    if height is None:
        page.screenshot(path=str(path), full_page=True)
    else:
        width = page.viewport_size["width"]
        page.screenshot(path=str(path), full_page=True,
                        clip={"x": 0, "y": 0, "width": width, "height": height})
    assert path.stat().st_size > 10_000  # a rendered page, not a blank one
    if os.environ.get("UPDATE_DOCS_SCREENSHOTS") == "1":
        DOCS_IMAGES.mkdir(exist_ok=True)
        shutil.copy(path, DOCS_IMAGES / path.name)
    return path


def generate(url: str, model: str, stream: bool = False) -> httpx.Response:
    return httpx.post(url + "/api/generate", timeout=120, json={
        "model": model, "prompt": "tell me about the shard layer", "stream": stream,
        "options": {"temperature": 0, "num_predict": 16}})


def assert_nothing_clipped_or_broken(page: Any) -> None:
    """Issue 28, finding 11: every chart's axis labels lie inside the chart ("10.00 s", not
    "0.00 s" cut at the edge), and no node name or address is broken over lines."""
    outside = ("ts => ts.filter(t => t.getBoundingClientRect().left < "
               "t.ownerSVGElement.getBoundingClientRect().left - 0.5).map(t => t.textContent)")
    clipped = page.eval_on_selector_all("svg text.axis", outside)
    assert clipped == [], f"axis labels cut off: {clipped}"
    # and with wide labels: the page's own chart code, on a chart of its own, tens of seconds
    clipped = page.evaluate(
        "() => { const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');"
        " document.querySelector('figure.chart').append(svg);"
        " SollolCharts.draw(svg, [{values: [1, 12.5, 3], cls: 's0'}],"
        "                   {step: 10, format: v => v.toFixed(2) + ' s'});"
        " const box = svg.getBoundingClientRect();"
        " const cut = [...svg.querySelectorAll('text.axis')]"
        "   .filter(t => t.getBoundingClientRect().left < box.left - 0.5).map(t => t.textContent);"
        " svg.remove(); return cut; }")
    assert clipped == [], f"axis labels cut off: {clipped}"
    broken = page.eval_on_selector_all(
        ".grid .id", "ids => ids.filter(e => Math.round(e.getBoundingClientRect().height) > "
        "Math.ceil(parseFloat(getComputedStyle(e).lineHeight) || 18) + 1)"
        ".map(e => e.textContent)")
    assert broken == [], f"names broken over lines: {broken}"


def test_dashboard_shows_the_cluster_live(
    page, emulator, rpc_servers, rpc_serve, ollama_store, llama_binaries, tmp_path: Path,
) -> None:
    nodes = [emulator(models=[POOL_MODEL], tokens_per_second=400.0, latency=0.02),
             emulator(models=[POOL_MODEL], tokens_per_second=250.0, latency=0.03)]
    # one rpc-server started by `sollol rpc serve` (its devices are named), one bare
    named = rpc_serve(tmp_path / "sharding")
    shards = [named, *(address for address, _proc in rpc_servers(1))]
    gateway = hybrid_gateway([n.url for n in nodes], shards, tmp_path / "sharding",
                             llama_binaries.llama_server.parent)
    try:
        reply = generate(gateway.url, "tiny")  # starts the coordinator over both rpc-servers
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-sollol-route"] == "sharding"
        for index in range(12):
            assert generate(gateway.url, POOL_MODEL, stream=index % 2 == 0).status_code == 200
        assert generate(gateway.url, "no-such-model").status_code == 404

        page.goto(gateway.url + "/dashboard")
        # node rows: one per emulated node, both healthy, with their loaded model
        for node in nodes:
            page.wait_for_selector(f'#nodes tr[data-node="{node.address}"][data-health="healthy"]',
                                   timeout=WAIT_MS)
        assert POOL_MODEL in page.inner_text("#nodes")
        # the coordinator with a layer bar per rpc-server, each holding some layers
        # (the gateway names models canonically: tiny is tiny:latest)
        card = '#coordinators .coord[data-model^="tiny"][data-state="ready"]'
        page.wait_for_selector(card, timeout=WAIT_MS)
        bars = page.eval_on_selector_all(
            f"{card} .layers .bar", "bars => bars.map(b => [Number(b.dataset.layers), "
            "b.firstElementChild.getBoundingClientRect().width])")
        assert len(bars) >= 2 and all(layers > 0 and width > 0 for layers, width in bars[:2])
        for address in shards:
            assert address in page.inner_text(card)
            page.wait_for_selector(f'#rpc tr[data-rpc="{address}"]', timeout=WAIT_MS)
        assert "tiny" in page.inner_text("#rpc")  # each rpc-server names its coordinator
        # devices by llama.cpp's names where `sollol rpc serve` recorded them, else by index
        page.wait_for_selector(f'#rpc tr[data-rpc="{named}"][data-devices="CPU"]',
                               timeout=WAIT_MS)
        assert "device 0" in page.inner_text(f'#rpc tr[data-rpc="{shards[1]}"]')
        assert f"{named} (CPU)" in page.inner_text(card)
        # llama.cpp's pipeline parallelism (every layer on two rpc-servers: on) and the slots
        assert "pipeline parallelism: on" in page.inner_text(f"{card} .pipeline")
        assert "slots 0/auto busy · 0 queued · 0 refused" in page.inner_text(card)
        # `sollol status` tells the same story in the terminal, bars included
        from click.testing import CliRunner

        from sollol.cli import build_cli

        status = CliRunner().invoke(build_cli(), ["status", "--gateway", gateway.url],
                                    env={"COLUMNS": "220"})
        assert status.exit_code == 0, status.output
        for text in (*shards, *(n.address for n in nodes), "tiny", "ready", "█", "layers",
                     f"{named} (CPU)"):
            assert text in status.output, text
        # the charts drew the traffic
        page.wait_for_selector("#chart-rate path.series", timeout=WAIT_MS)

        # a request made now appears in the live table, and the filter finds it
        page.fill("#filter", "made-up-model-for-the-filter")
        assert generate(gateway.url, "made-up-model-for-the-filter").status_code == 404
        page.wait_for_selector('#requests tr[data-model="made-up-model-for-the-filter"]',
                               timeout=WAIT_MS)
        assert page.locator("#requests tbody tr").count() == 1  # the filter hides the rest
        page.fill("#filter", "")
        before = 12  # the pool requests sent above: the next one is row 13
        assert generate(gateway.url, POOL_MODEL).status_code == 200
        # (wait_for_selector polls; the page's CSP forbids the eval wait_for_function needs)
        page.locator(f'#requests tr[data-model="{POOL_MODEL}"]').nth(before).wait_for(
            timeout=WAIT_MS)
        shoot(page, tmp_path, "desktop", height=1300)
        assert_nothing_clipped_or_broken(page)

        # a node taken down turns unhealthy on the page within a few seconds
        nodes[1].refuse()
        started = time.monotonic()
        page.wait_for_selector(
            f'#nodes tr[data-node="{nodes[1].address}"]:not([data-health="healthy"])',
            timeout=WAIT_MS)
        noticed = time.monotonic() - started
        print(f"node down shown after {noticed:.1f}s")
        assert page.get_attribute(f'#nodes tr[data-node="{nodes[0].address}"]',
                                  "data-health") == "healthy"

        page.set_viewport_size({"width": 390, "height": 844})  # a phone
        page.wait_for_timeout(300)  # one layout pass for the resized charts (not a wait for data)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways on a phone ({width}px wide)"
        assert_nothing_clipped_or_broken(page)
        page.emulate_media(color_scheme="light")
        shoot(page, tmp_path, "narrow", height=2000)
    finally:
        gateway.stop()


def test_the_page_reconnects_when_the_gateway_restarts(page, emulator) -> None:
    node = emulator(models=[POOL_MODEL])
    overrides = {"plugins": ["ollama_pool"], "ollama_nodes": [node.url]}
    first = GatewayThread(ClusterRuntime.from_config(overrides=overrides)).start()
    port = first.port
    try:
        page.goto(first.url + "/dashboard")
        page.wait_for_selector('#link[data-state="live"]', timeout=WAIT_MS)
        page.wait_for_selector(f'#nodes tr[data-node="{node.address}"]', timeout=WAIT_MS)
    finally:
        first.stop()
    page.wait_for_selector('#link[data-state="down"]', timeout=WAIT_MS)
    second = GatewayThread(ClusterRuntime.from_config(overrides=overrides), port=port).start()
    try:
        page.wait_for_selector('#link[data-state="live"]', timeout=WAIT_MS)
        assert generate(second.url, POOL_MODEL).status_code == 200
        page.wait_for_selector(f'#requests tr[data-model="{POOL_MODEL}"]', timeout=WAIT_MS)
    finally:
        second.stop()


def test_with_access_keys_the_page_needs_an_admin_key(chromium, emulator, pool_gateway) -> None:
    """The browser asks for the key (HTTP Basic, the key as the password); the page and its
    event stream then run on the browser's credentials; an inference key is refused."""
    from sollol.core.access import hash_key, new_key

    admin, user = new_key(), new_key()
    node = emulator(models=[POOL_MODEL])
    gateway = pool_gateway(node.address, plugins=["ollama_pool"], api_keys=[
        {"name": "root", "hash": hash_key(admin), "admin": True},
        {"name": "app", "hash": hash_key(user)}])

    from playwright.sync_api import Error as BrowserError

    anonymous = chromium.new_context()
    try:
        page = anonymous.new_page()
        answers: list[Any] = []
        page.on("response", lambda answer: answers.append(answer))
        # headless, nobody types a key into the prompt: the browser gives up on the page
        with pytest.raises(BrowserError, match="ERR_INVALID_AUTH_CREDENTIALS"):
            page.goto(gateway.url + "/dashboard")
        (answer,) = answers
        assert answer.status == 401
        assert answer.headers["www-authenticate"].startswith("Basic")
    finally:
        anonymous.close()

    for key, status in ((user, 403), (admin, 200)):
        context = chromium.new_context(http_credentials={"username": "me", "password": key})
        try:
            page = context.new_page()
            assert page.goto(gateway.url + "/dashboard").status == status
            if status == 200:  # the stream is admin-scoped too: live only with the key
                page.wait_for_selector('#link[data-state="live"]', timeout=WAIT_MS)
                page.wait_for_selector(f'#nodes tr[data-node="{node.address}"]',
                                       timeout=WAIT_MS)
        finally:
            context.close()


def test_a_coordinator_card_says_why_pipeline_parallelism_is_off_and_names_its_draft(
    page, rpc_servers, sharding_gateway, tiny_model: Path, tmp_path: Path,
) -> None:
    """The other half of the pipeline report (the first test shows "on"): placed on the fewest
    shards, one, the coordinator runs without it and the card says why; its draft is named."""
    from sollol.testing.tiny_models import make_tiny_model

    draft = make_tiny_model(tmp_path / "draft.gguf", layers=2, seed=7)
    gateway = sharding_gateway([a for a, _ in rpc_servers(2)],
                               rpc_draft_models={str(tiny_model): str(draft)})
    reply = generate(gateway.url, str(tiny_model))
    assert reply.status_code == 200, reply.text
    page.goto(gateway.url + "/dashboard")
    card = '#coordinators .coord[data-state="ready"]'
    page.wait_for_selector(card, timeout=WAIT_MS)
    assert page.inner_text(f"{card} .pipeline") == \
        "pipeline parallelism: off: 1 RPC device(s) (it needs two or more)"
    assert f"draft model: {draft}" in page.inner_text(card)
