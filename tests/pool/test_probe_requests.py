"""What the gateway asks of a node over many probe rounds (issue 26): what a node can do is
learned once per model load, a path it said it does not serve is not asked again, and after the
first round only the cheap liveness requests remain. Counted per path by a proxy in front of real
llama-server nodes and an emulated Ollama node."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import ollama
import pytest

from sollol.testing.counting_proxy import CountingProxy
from sollol.testing.tiny_models import make_tiny_model

LIVENESS_OPENAI = {"GET /health", "GET /v1/models", "GET /slots"}
LIVENESS_OLLAMA = {"GET /api/tags", "GET /api/ps"}
FAST = {"health_interval": 0.05, "backend_metrics_interval": 0.05}


@pytest.fixture
def counting_proxy():
    started: list[CountingProxy] = []

    def make(target: str) -> CountingProxy:
        started.append(CountingProxy(target).start())
        return started[-1]

    yield make
    for proxy in started:
        proxy.stop()


def wait(condition: Callable[[], bool], what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def node(url: str) -> dict:
    (found,) = httpx.get(url + "/sollol/nodes", timeout=10).json()["nodes"]
    return found


def rounds(proxy: CountingProxy, path: str, count: int) -> dict[str, int]:
    """The requests of the next `count` probe rounds (a round asks `path` once)."""
    before = proxy.counts()
    wait(lambda: proxy.counts().get(path, 0) >= before.get(path, 0) + count, f"{count} rounds")
    after = proxy.counts()
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


@pytest.mark.llamacpp
@pytest.mark.slow
def test_llama_server_is_asked_what_it_can_do_once_per_model(
        llama_server, tiny_model, tmp_path, counting_proxy, pool_gateway):
    first, _ = llama_server(tiny_model, "--alias", "tiny", "--embeddings", "--pooling", "mean")
    other = make_tiny_model(tmp_path / "other.gguf", seed=1)
    second, _ = llama_server(other, "--alias", "other", "--no-slots")
    proxy = counting_proxy(first)
    gw = pool_gateway("openai://" + proxy.address, **FAST)
    wait(lambda: node(gw.url)["capabilities"], "capabilities learned")
    assert "embedding" in node(gw.url)["capabilities"][""]
    later = rounds(proxy, "GET /health", 40)
    assert set(later) <= LIVENESS_OPENAI, later  # no /props, /v1/embeddings or /metrics
    seen = proxy.counts()
    assert seen["GET /props"] == 1 and seen["POST /v1/embeddings"] == 1, seen
    assert seen.get("GET /metrics", 0) <= 1, seen  # started without --metrics: /props said so
    # the node now serves another model, with no downtime in between: learned once more
    proxy.target = second
    wait(lambda: node(gw.url)["models"] == ["other"] and node(gw.url)["capabilities"],
         "the new model learned")
    later = rounds(proxy, "GET /health", 40)
    assert set(later) <= {"GET /health", "GET /v1/models"}, later  # --no-slots: not asked
    seen = proxy.counts()
    assert seen["GET /props"] == 2 and seen["POST /v1/embeddings"] == 2, seen
    assert seen.get("GET /metrics", 0) <= 2, seen
    assert "embedding" not in node(gw.url)["capabilities"][""]  # no --embeddings there
    assert node(gw.url)["unserved"] == ["/metrics", "/slots"]


def test_ollama_node_is_asked_once_per_model_digest(emulator, counting_proxy, pool_gateway):
    server = emulator(models=["a"])
    proxy = counting_proxy(server.url)
    gw = pool_gateway(proxy.address, **FAST)
    wait(lambda: node(gw.url)["capabilities"], "capabilities learned")
    later = rounds(proxy, "GET /api/tags", 40)
    assert set(later) <= LIVENESS_OLLAMA, later
    seen = proxy.counts()
    assert seen["POST /api/show"] == 1 and seen["GET /api/version"] == 1, seen
    assert "GET /metrics" not in seen  # Ollama nodes are never scraped
    # a model pulled onto the node: its /api/show once, the known one not again
    ollama.Client(server.url).pull("b")  # (to the node itself: the proxy counts probes)
    wait(lambda: "b" in {m.split(":")[0] for m in node(gw.url)["capabilities"]},
         "the new model learned")
    later = rounds(proxy, "GET /api/tags", 40)
    assert set(later) <= LIVENESS_OLLAMA, later
    assert proxy.counts()["POST /api/show"] == 2
