"""The library over real llama-server pool nodes (OpenAI-compatible): order, errors, cancel."""

from __future__ import annotations

import httpx
import pytest

from sollol.client.tasks import Task

pytestmark = pytest.mark.llamacpp
MODEL = "tiny"


@pytest.fixture
def llama_nodes(llama_server, tiny_model):
    """Two llama-servers serving the tiny model as `tiny`, two slots each."""
    return [llama_server(tiny_model, "-c", "2048", "--parallel", "2", "--alias", MODEL)[0]
            for _ in range(2)]


def _openai(url: str) -> str:
    return "openai://" + url.removeprefix("http://")


def test_fan_out_over_llama_servers_keeps_order_and_captures_errors(llama_nodes,
                                                                    pool_cluster) -> None:
    lengths = [40, 2, 30, 3, 20, 1, 10, 4]
    tasks = [Task.generate(MODEL, f"story {i}", id=f"g{i}",
                           options={"num_predict": n, "temperature": 0})
             for i, n in enumerate(lengths)]
    tasks.insert(3, Task.chat("not-served", "hi", id="missing"))
    tasks.append(Task.chat(MODEL, "hello", id="chat", options={"num_predict": 5}))
    with pool_cluster([_openai(u) for u in llama_nodes]) as c:
        assert c.capacity() == 4  # llama-server's /slots: two per node
        results = c.gather(tasks)
    assert [r.id for r in results] == [t.id for t in tasks]
    missing = results[3]
    assert not missing.ok and missing.error_type == "ModelNotFound"
    generated = [r for r in results if r.id.startswith("g")]
    assert all(r.ok for r in generated), [r.error for r in generated]
    assert [r.response.tokens for r in generated] == lengths  # translated usage counts
    assert {r.response.backend for r in generated} == {u.removeprefix("http://")
                                                       for u in llama_nodes}
    assert results[-1].ok and results[-1].response.message["role"] == "assistant"


async def test_cancel_over_a_llama_server_leaves_it_serving(llama_nodes, pool_cluster) -> None:
    url = llama_nodes[0]
    async with pool_cluster([_openai(url)]) as c:
        run = c.fan_out([Task.generate(MODEL, f"p{i}", options={"num_predict": 200})
                         for i in range(30)], concurrency=1)
        run.on_result = lambda _r: run.cancel()
        results = await run
        assert [r.ok for r in results[:1]] == [True]
        assert all(r.cancelled for r in results[1:])
        after = await c.achat(MODEL, "still there?", options={"num_predict": 3})
        assert after.tokens == 3
    slots = httpx.get(url + "/slots", timeout=10).json()
    assert not any(s.get("is_processing") for s in slots)
