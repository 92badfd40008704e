"""Capabilities: a node that cannot do something is a node without that capability, never an
unhealthy one. Real llama-servers with and without `--embeddings`, emulated Ollama nodes, a
scripted node that answers 501, and the sharding route's coordinators."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sollol.core import capabilities as caps
from sollol.testing.emulator import EmulatedModel

MSG = [{"role": "user", "content": "hello"}]
EMBED = frozenset({"embedding"})
FAST = {"health_interval": 0.3, "pool_health_timeout": 2.0}


def nodes(gw) -> dict[str, dict]:
    return {n["id"]: n for n in httpx.get(gw.url + "/sollol/nodes").json()["nodes"]}


def test_needs_of_each_request():
    assert caps.needs("embed", {"input": "x"}) == {"embedding"}
    assert caps.needs("chat", {"messages": MSG}) == {"completion", "chat"}
    assert caps.needs("chat", {"messages": MSG, "tools": [{"type": "function"}]}) >= {"tools"}
    images = [{"role": "user", "content": "what", "images": ["aGk="]}]
    assert "vision" in caps.needs("chat", {"messages": images})
    parts = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    assert "vision" in caps.needs("chat", {"messages": parts})
    assert caps.needs("generate", {"prompt": "x", "images": ["aGk="]}) >= {"vision"}
    assert caps.needs("show", {}) == frozenset()


def test_unsupported_answers_are_told_from_failures():
    llama = json.dumps({"error": {"code": 501, "type": "not_supported_error",
                                  "message": "This server does not support embeddings."}})
    assert caps.unsupported(501, llama.encode(), frozenset({"embedding"})) == "embedding"
    ollama = json.dumps({"error": '"embed" does not support chat'}).encode()
    assert caps.unsupported(400, ollama, frozenset({"completion", "chat"})) == "chat"
    bad_field = json.dumps({"error": "field 'x' must be a string"}).encode()
    assert caps.unsupported(400, bad_field, frozenset({"chat"})) is None
    assert caps.unsupported(500, llama.encode(), frozenset({"embedding"})) is None
    assert caps.unsupported(503, b"busy", frozenset({"embedding"})) is None
    thinking = json.dumps({"error": '"m" does not support thinking'}).encode()
    assert caps.unsupported(400, thinking, frozenset({"completion", "chat"})) is None
    generate = json.dumps({"error": '"embed" does not support generate'}).encode()
    assert caps.unsupported(400, generate, frozenset({"completion"})) == "completion"
    vague = json.dumps({"error": {"type": "not_supported_error", "message": "no"}}).encode()
    assert caps.unsupported(501, vague, frozenset({"completion", "chat", "tools"})) == "tools"


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20),
       st.sampled_from(["chat", "generate", "completions", "embed", "embeddings", "show",
                        "messages", "responses"]))
def test_needs_of_any_body_is_a_set_of_known_capabilities(body, op):
    found = caps.needs(op, body if isinstance(body, dict) else {"messages": body,
                                                                 "tools": body})
    assert found <= set(caps.ALL)


@given(st.integers(100, 599), st.binary(max_size=200),
       st.sets(st.sampled_from(caps.ALL)).map(frozenset))
def test_unsupported_never_blames_a_server_failure(status, raw, wanted):
    found = caps.unsupported(status, raw, wanted)
    if status < 400 or (status >= 500 and status != 501):
        assert found is None  # a 5xx other than 501 is a failure, to retry elsewhere
    assert found is None or found in wanted


def test_llama_servers_with_and_without_embeddings(llama_server, tiny_model, pool_gateway):
    plain, _ = llama_server(tiny_model, "--alias", "tiny.gguf")
    embeds, _ = llama_server(tiny_model, "--alias", "tiny.gguf", "--embeddings",
                             "--pooling", "mean")
    no_pooling, _ = llama_server(tiny_model, "--alias", "tiny.gguf", "--embeddings")
    gw = pool_gateway(f"openai://{plain[7:]}", f"openai://{embeds[7:]}",
                      f"openai://{no_pooling[7:]}", **FAST)
    seen = nodes(gw)
    # --embeddings with the model's pooling "none": no OpenAI embeddings either
    assert "embedding" not in seen[no_pooling[7:]]["capabilities"][""]
    assert seen[plain[7:]]["server"] == "llama-server"
    assert "embedding" not in seen[plain[7:]]["capabilities"][""]
    assert "embedding" in seen[embeds[7:]]["capabilities"][""]
    assert {"completion", "chat"} <= set(seen[plain[7:]]["capabilities"][""])
    for _ in range(8):  # all to the one node that can; none ejects anybody
        reply = httpx.post(gw.url + "/v1/embeddings", json={"model": "tiny.gguf", "input": "hi"})
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-sollol-backend"] == embeds[7:]
    for _ in range(4):  # chat still goes to both
        reply = httpx.post(gw.url + "/v1/chat/completions",
                           json={"model": "tiny.gguf", "messages": MSG, "max_tokens": 2})
        assert reply.status_code == 200, reply.text
    assert {n["health"] for n in nodes(gw).values()} == {"healthy"}
    from sollol_plugins.ollama_pool.pool_commands import render

    table = render(httpx.get(gw.url + "/sollol/nodes").json())
    assert f"{plain[7:]} (llama-server) cannot do embeddings and images (vision)" in table
    assert f"{embeds[7:]} (llama-server) cannot do images (vision)" in table
    served = {i: n["served"] for i, n in nodes(gw).items()}
    assert served[embeds[7:]] >= 8 and served[plain[7:]] >= 1


def test_no_node_can_embed_answers_at_once_naming_the_kind(llama_server, tiny_model,
                                                           pool_gateway):
    plain, _ = llama_server(tiny_model, "--alias", "tiny.gguf")
    gw = pool_gateway(f"openai://{plain[7:]}", **FAST)
    for path, body in (("/v1/embeddings", {"model": "tiny.gguf", "input": "x"}),
                       ("/api/embed", {"model": "tiny.gguf", "input": "x"})):
        reply = httpx.post(gw.url + path, json=body)
        assert reply.status_code == 501, reply.text
        text = reply.text
        assert "llama-server" in text and "--embeddings" in text and plain[7:] in text
    event = httpx.get(gw.url + "/sollol/events").json()["events"][-1]
    assert event["attempts"] == 0 and event["status"] == 501  # never sent, never retried
    chat = httpx.post(gw.url + "/api/chat", json={"model": "tiny.gguf", "messages": MSG,
                                                  "stream": False,
                                                  "options": {"num_predict": 2}})
    assert chat.status_code == 200, chat.text
    assert nodes(gw)[plain[7:]]["health"] == "healthy"


def test_a_501_is_learned_passed_on_at_once_and_not_a_failure(scripted_node, pool_gateway):
    node = scripted_node(embeddings=False)
    gw = pool_gateway(f"openai://{node.url[7:]}", pool_eject_failures=1, **FAST)
    first = httpx.post(gw.url + "/v1/embeddings", json={"model": "scripted", "input": "x"})
    assert first.status_code == 501
    assert "does not support embeddings" in first.json()["error"]["message"]
    assert "openai" in first.json()["error"]["message"]  # the node kind
    assert len([r for r in node.requests if r["path"] == "/v1/embeddings"]) == 1  # no retry
    second = httpx.post(gw.url + "/v1/embeddings", json={"model": "scripted", "input": "x"})
    assert second.status_code == 501
    assert len([r for r in node.requests if r["path"] == "/v1/embeddings"]) == 1  # learned
    state = nodes(gw)[node.url[7:]]
    assert state["health"] == "healthy" and state["failed"] == 0
    assert state["lacks"] == {"": ["embedding"]}
    chat = httpx.post(gw.url + "/v1/chat/completions", json={"model": "scripted", "messages": MSG})
    assert chat.status_code == 200


def test_ollama_capabilities_from_show(emulator, pool_gateway):
    node = emulator(models=["chat:1b", EmulatedModel("embedonly", capabilities=("embedding",)),
                            EmulatedModel("eyes", capabilities=("completion", "vision"))])
    gw = pool_gateway(node.address, **FAST)
    chat = httpx.post(gw.url + "/api/chat", json={"model": "embedonly", "messages": MSG})
    assert chat.status_code == 501, chat.text
    assert "ollama" in chat.json()["error"] and "chat" in chat.json()["error"]
    assert node.stats()["requests"].get("/api/chat", 0) == 0  # refused before sending
    images = [{"role": "user", "content": "look", "images": ["aGk="]}]
    blind = httpx.post(gw.url + "/api/chat", json={"model": "chat:1b", "messages": images})
    assert blind.status_code == 501 and "vision" in blind.json()["error"]
    seeing = httpx.post(gw.url + "/api/chat", json={"model": "eyes", "messages": images,
                                                    "stream": False})
    assert seeing.status_code == 200, seeing.text
    embed = httpx.post(gw.url + "/api/embed", json={"model": "embedonly", "input": "x"})
    assert embed.status_code == 200
    assert nodes(gw)[node.address]["health"] == "healthy"


async def test_sharding_route_refuses_embeddings_at_once(rpc_servers, sharding_route,
                                                         tiny_model):
    from sollol.errors import NotSupported
    from sollol.models import RouteRequest

    (address, _), = rpc_servers(1)
    route = await sharding_route([address])
    request = RouteRequest(model=str(tiny_model), endpoint="embed", needs=frozenset({"embedding"}))
    place = await route.placement(request)
    assert place.holds is True and place.missing == {"embedding"}
    with pytest.raises(NotSupported, match="--embeddings"):
        await route.acquire(request)
    assert not route.supervisor.coordinators  # nothing was started for it
    chat = await route.placement(RouteRequest(model=str(tiny_model), needs=frozenset({"chat"})))
    assert chat.able
    ghost = await route.placement(RouteRequest(model="ghost"))
    assert ghost.holds is False and "no GGUF" in ghost.reason


def test_a_learned_lack_gives_way_to_what_the_node_reports_later():
    from sollol_plugins.ollama_pool.node import Node
    from sollol_plugins.ollama_pool.pool_settings import PoolSettings

    from sollol.models import Backend, HealthReport
    from sollol.routes import Outcome

    settings = PoolSettings()
    node = Node(Backend("n", "openai", "127.0.0.1:9"), 4)
    up = HealthReport("n", healthy=True, models=("m",), extra={"api": "openai"})
    node.apply(up, 0.0, settings)
    assert not node.record(Outcome(False, 501, "x", unsupported="embedding"), 1.0, settings,
                           may_eject=True)  # never a failure
    node.learn_lack("m", "embedding")
    assert node.missing("m", EMBED) == EMBED and node.failures == 0
    node.apply(HealthReport("n", healthy=False), 2.0, settings)  # down, then back:
    node.apply(up, 3.0, settings)  # perhaps restarted with --embeddings
    assert node.missing("m", EMBED) == frozenset()
    node.learn_lack("m", "embedding")
    told = HealthReport("n", healthy=True, models=("m",), extra={
        "api": "openai", "capabilities": {"": frozenset({"completion", "embedding"})}})
    node.apply(told, 4.0, settings)
    assert node.missing("m", EMBED) == frozenset()

