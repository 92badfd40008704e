"""model_aliases and model_fallbacks through the gateway, and listings that match reality:
emulated Ollama nodes and a real llama-server started on a file path without --alias."""

from __future__ import annotations

import contextlib

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sollol.config import load_config
from sollol.core.aliases import check_aliases, check_fallbacks, targets
from sollol.errors import ConfigError
from sollol.testing.emulator import Faults

MSG = [{"role": "user", "content": "hi"}]
FAST = {"health_interval": 0.3, "pool_health_timeout": 2.0}


def chat(gw, model: str) -> httpx.Response:
    return httpx.post(gw.url + "/api/chat", json={"model": model, "messages": MSG,
                                                  "stream": False}, timeout=30)


def test_alias_names_a_model_and_is_listed(emulator, pool_gateway):
    a = emulator(models=["chat:1b"])
    b = emulator(models=["chat:1b"])
    aliases = {"fast": "chat:1b", "pinned": {"model": "chat:1b", "nodes": [b.address]}}
    gw = pool_gateway(a.address, b.address, model_aliases=aliases, **FAST)
    names = [m["name"] for m in httpx.get(gw.url + "/api/tags").json()["models"]]
    assert sorted(names) == ["chat:1b", "fast", "pinned"]
    ids = [m["id"] for m in httpx.get(gw.url + "/v1/models").json()["data"]]
    assert sorted(ids) == ["chat:1b", "fast", "pinned"]
    reply = chat(gw, "fast")
    assert reply.status_code == 200 and reply.json()["message"]["content"]
    assert a.stats()["recent"][-1]["model"] == "chat:1b" or \
        b.stats()["recent"][-1]["model"] == "chat:1b"  # the node got the real name
    for _ in range(4):  # "pinned" only ever uses node b
        reply = chat(gw, "pinned")
        assert reply.status_code == 200
        assert reply.headers["x-sollol-backend"] == b.address
        assert reply.headers["x-sollol-policy"] == "alias"
    explained = httpx.get(gw.url + "/sollol/route", params={"model": "pinned"}).json()
    assert explained["alias_of"] == "chat:1b" and explained["policy"] == "alias"
    assert b.address in explained["reason"]
    typo = chat(gw, "fsat")
    assert typo.status_code == 404 and "did you mean 'fast'" in typo.json()["error"]


def test_fallback_serves_before_the_first_byte_and_says_so(emulator, pool_gateway):
    node = emulator(models=["small:1b", "flaky:7b"])
    fallbacks = {"big:70b": ["small:1b"], "flaky:7b": ["small:1b"]}
    gw = pool_gateway(node.address, model_fallbacks=fallbacks, pool_eject_failures=100, **FAST)
    missing = chat(gw, "big:70b")  # on no node: the fallback answers
    assert missing.status_code == 200, missing.text
    assert missing.headers["x-sollol-fallback"] == "small:1b"
    assert missing.headers["x-sollol-requested-model"] == "big:70b"
    served = chat(gw, "small:1b")
    assert "x-sollol-fallback" not in served.headers
    node.set_faults(Faults(error_status=503, error_count=1))  # flaky:7b fails once
    flaky = chat(gw, "flaky:7b")
    assert flaky.status_code == 200 and flaky.headers["x-sollol-fallback"] == "small:1b"
    stream = httpx.post(gw.url + "/api/chat", json={"model": "big:70b", "messages": MSG})
    assert stream.status_code == 200 and stream.headers["x-sollol-fallback"] == "small:1b"
    ghost = chat(gw, "ghost")  # no fallbacks: the 404 stands
    assert ghost.status_code == 404


def test_fallback_chain_that_all_fails_names_every_try(emulator, pool_gateway):
    node = emulator(models=["small:1b"])
    gw = pool_gateway(node.address, model_fallbacks={"a": ["b", "c"]}, **FAST)
    reply = chat(gw, "a")
    assert reply.status_code == 404
    assert "'c'" in reply.json()["error"] and "a: " in reply.json()["error"]


def test_alias_and_fallback_config_is_checked_at_load():
    with pytest.raises(ConfigError, match="model_aliases"):
        load_config(overrides={"model_aliases": {"x": {"model": "m", "route": "gpu"}}})
    with pytest.raises(ConfigError, match="model_aliases"):
        load_config(overrides={"model_aliases": {"x": {"model": "m", "nodez": ["a"]}}})
    with pytest.raises(ConfigError, match="another alias"):
        load_config(overrides={"model_aliases": {"x": "y", "y": "m"}})
    with pytest.raises(ConfigError, match="itself"):
        load_config(overrides={"model_fallbacks": {"m": ["m:latest"]}})
    config = load_config(overrides={"model_aliases": {"fast": "m:1b"},
                                    "model_fallbacks": {"fast": ["n"], "m:1b": ["o"]}})
    assert [(t.name, t.model) for t in targets(config, "fast")] == [
        ("fast", "m:1b"), ("n", "n")]


@given(st.dictionaries(st.text(max_size=8), st.one_of(
    st.text(max_size=8), st.integers(), st.lists(st.text(max_size=4), max_size=3),
    st.dictionaries(st.sampled_from(["model", "route", "nodes", "x"]),
                    st.one_of(st.text(max_size=6), st.lists(st.text(max_size=4)))))))
def test_any_alias_table_is_accepted_or_refused_with_a_value_error(table):
    for check in (check_aliases, check_fallbacks):
        with contextlib.suppress(ValueError):  # any other exception fails the test
            check(table)


def test_listings_match_reality(llama_server, tiny_model, emulator, pool_gateway):
    """A llama-server started on a path lists under the file's name, with family, parameter
    size and quantization; `x` and `x:latest` are one entry; /api/ps times hold still."""
    url, _ = llama_server(tiny_model)  # no --alias: it calls its model by the file path
    node = emulator(models=["tiny:latest", "other:1b"])
    gw = pool_gateway(f"openai://{url[7:]}", node.address, **FAST)
    models = httpx.get(gw.url + "/api/tags").json()["models"]
    names = sorted(m["name"] for m in models)
    assert names == ["other:1b", "tiny:latest"] or names == ["other:1b", "tiny"]
    assert not any("/" in n for n in names)
    ids = [m["id"] for m in httpx.get(gw.url + "/v1/models").json()["data"]]
    assert len(ids) == 2
    # the family comes from the operator's own copy of the file, found by its name: the
    # gateway never opens the path a node names (tests/security/test_hostile_node_paths.py)
    gw2 = pool_gateway(f"openai://{url[7:]}", gguf_dirs=[str(tiny_model.parent)], **FAST)
    (entry,) = httpx.get(gw2.url + "/api/tags").json()["models"]
    assert entry["name"] == "tiny"
    assert entry["details"]["family"] == "llama"
    assert entry["details"]["parameter_size"] and entry["details"]["quantization_level"] == "F16"
    first = httpx.get(gw2.url + "/api/ps").json()["models"][0]
    # times carry microseconds: a time made up per call would differ between the calls
    again = httpx.get(gw2.url + "/api/ps").json()["models"][0]
    assert first["modified_at"] == again["modified_at"]
    assert first["expires_at"] == again["expires_at"]
    reply = chat(gw2, "tiny")  # the listed name serves
    assert reply.status_code == 200, reply.text


def test_the_library_sees_a_fallback_in_process_and_remote(emulator, pool_gateway,
                                                           pool_cluster):
    import sollol

    node = emulator(models=["small:1b"])
    fallbacks = {"big:70b": ["small:1b"]}
    with pool_cluster([node.url], model_fallbacks=fallbacks) as cluster:
        here = cluster.chat("big:70b", "hi")
    assert here.fallback == "small:1b" and here.text
    gw = pool_gateway(node.address, model_fallbacks=fallbacks, **FAST)
    with sollol.Cluster(gateway=gw.url) as remote:
        there = remote.chat("big:70b", "hi")
        plain = remote.chat("small:1b", "hi")
    assert there.fallback == "small:1b" and there.route == "pool"
    assert plain.fallback == ""


async def test_did_you_mean_lists_the_routes_models_once_per_burst():
    from sollol.core.plugin_manager import get_plugin_manager
    from sollol.core.runtime import ClusterRuntime
    from sollol.errors import ModelNotFound

    class Listing:
        name = "pool"
        calls = 0

        async def list_models(self):
            Listing.calls += 1
            return [{"name": "llama3.2:1b"}]

    cluster = ClusterRuntime(config=load_config(), pm=get_plugin_manager(load_entry_points=False))
    cluster.routes = {"pool": Listing()}
    for _ in range(50):  # a burst of unknown names
        error = await cluster.not_found(ModelNotFound("model 'llama3.2:1' not found"),
                                        "llama3.2:1")
        assert "did you mean 'llama3.2:1b'" in str(error)
    assert Listing.calls == 1
