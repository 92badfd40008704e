"""The pool's pure parts: address syntax, settings, balancing and passive health rules."""

from __future__ import annotations

import pytest
from sollol_plugins.ollama_pool.balance import choose
from sollol_plugins.ollama_pool.node import Node, model_names
from sollol_plugins.ollama_pool.node_discovery import base_url, parse_node
from sollol_plugins.ollama_pool.pool_settings import PoolSettings

from sollol.core.units import parse_bytes
from sollol.errors import ConfigError
from sollol.models import Backend, HealthReport
from sollol.routes import Outcome

SETTINGS = PoolSettings(eject_failures=2, eject_seconds=5, eject_max_seconds=20,
                        health_interval=5, backoff_max=40)


def node(name: str, *, spt: float | None = None, in_flight: int = 0, limit: int = 4,
         models: tuple[str, ...] = ("m",), loaded: tuple[str, ...] | None = None) -> Node:
    n = Node(Backend(name, "ollama", name), limit)
    n.apply(HealthReport(name, True, models=models,
                         loaded_models=models if loaded is None else loaded), 0.0, SETTINGS)
    n.sec_per_token, n.in_flight = spt, in_flight
    return n


@pytest.mark.parametrize(("text", "kind", "address", "url", "detect"), [
    ("10.0.0.5:11434", "ollama", "10.0.0.5:11434", "http://10.0.0.5:11434", True),
    ("10.0.0.5", "ollama", "10.0.0.5:11434", "http://10.0.0.5:11434", True),
    ("http://box:8080/", "ollama", "box:8080", "http://box:8080", True),
    ("https://box", "ollama", "box:11434", "https://box:11434", True),
    ("ollama://box:1", "ollama", "box:1", "http://box:1", False),
    ("openai://127.0.0.1:8081", "openai", "127.0.0.1:8081", "http://127.0.0.1:8081", False),
    ("OPENAI+HTTPS://h:443", "openai", "h:443", "https://h:443", False),
    ("[::1]:9", "ollama", "[::1]:9", "http://[::1]:9", True),
])
def test_node_address_syntax(text, kind, address, url, detect):
    backend = parse_node(text)
    assert (backend.kind, backend.address, backend.id) == (kind, address, address)
    assert base_url(backend) == url
    assert (backend.labels.get("detect") == "1") is detect


@pytest.mark.parametrize("text", ["ftp://box:1", "box:99999", "box:port", "http://:80"])
def test_bad_node_addresses_are_refused(text):
    with pytest.raises(ValueError, match="node"):
        parse_node(text)


def test_settings_are_validated(pm):
    from sollol.core.runtime import load

    config, _ = load(overrides={"pool_node_memory": {"a:1": "16GiB", "b:2": 1000},
                                "pool_discovery_cidr": "127.0.0.0/30"})
    assert config["pool_node_memory"] == {"a:1": 16 * 2**30, "b:2": 1000}
    assert config["pool_discovery_cidr"] == "127.0.0.0/30"
    with pytest.raises(ConfigError, match="1024 addresses"):
        load(overrides={"pool_discovery_cidr": "10.0.0.0/8"})
    with pytest.raises(ConfigError, match="pool_node_concurrency"):
        load(overrides={"pool_node_concurrency": 0})
    with pytest.raises(ConfigError, match="size"):
        load(overrides={"pool_node_memory": {"a:1": "lots"}})
    # one size syntax everywhere: GB is decimal, G and GiB are binary (as in policy settings)
    assert parse_bytes("24 GB") == 24 * 10**9 and parse_bytes("512M") == 512 * 2**20


def test_model_name_spellings():
    assert model_names("llama3") == {"llama3", "llama3:latest"}
    assert model_names("llama3:latest") == {"llama3", "llama3:latest"}
    assert model_names("llama3:8b") == {"llama3:8b"}
    assert node("a", models=("llama3:latest",)).has_model("llama3")


def test_least_outstanding_weighted_by_speed():
    fast, slow = node("fast", spt=0.01), node("slow", spt=0.04)
    assert choose([slow, fast], "m", queued=1, avg_tokens=100, cold_penalty=5).node is fast
    fast.in_flight = 3
    # fast: (3 + 1) x 1 s = 4 s, slow: 1 x 4 s = 4 s: a tie, so the less busy (slow) node would
    # win; but the fast node finishes a short queue sooner and still has a free slot
    assert choose([slow, fast], "m", queued=1, avg_tokens=100, cold_penalty=5).node is fast
    fast.in_flight = 4
    waiting = choose([slow, fast], "m", queued=1, avg_tokens=100, cold_penalty=5)
    assert waiting.node is None and "faster nodes" in waiting.reason
    assert choose([slow, fast], "m", queued=50, avg_tokens=100, cold_penalty=5).node is slow


def test_equal_nodes_share_by_outstanding_requests():
    a, b = node("a", spt=0.01, in_flight=2), node("b", spt=0.01, in_flight=1)
    assert choose([a, b], "m", queued=1, avg_tokens=100, cold_penalty=5).node is b


def test_unmeasured_nodes_get_the_median_speed():
    known, new = node("known", spt=0.01), node("new")
    assert choose([known, new], "m", queued=1, avg_tokens=100,
                  cold_penalty=5).node in (known, new)
    new.in_flight = 1
    assert choose([known, new], "m", queued=1, avg_tokens=100, cold_penalty=5).node is known


def test_prefers_nodes_with_the_model_loaded():
    warm, cold = node("warm", spt=0.01, in_flight=2), node("cold", spt=0.01, loaded=())
    assert choose([cold, warm], "m", queued=1, avg_tokens=100, cold_penalty=5).node is warm
    warm.in_flight = 4
    assert choose([cold, warm], "m", queued=1, avg_tokens=100, cold_penalty=5).node is None
    assert choose([cold, warm], "m", queued=100, avg_tokens=100, cold_penalty=5).node is cold


def test_all_busy_means_wait():
    a = node("a", in_flight=4)
    assert choose([a], "m", queued=1, avg_tokens=100, cold_penalty=5).node is None


def test_passive_ejection_grows_and_is_capped():
    n = node("a")
    fail = Outcome(False, 500, "boom")
    assert not n.record(fail, 100.0, SETTINGS, may_eject=True)
    assert n.record(fail, 100.0, SETTINGS, may_eject=True)  # 2 consecutive -> ejected
    assert n.ejected(104.9) and not n.available(104.9) and n.ejected_until == 105.0
    assert not n.available(106.0)  # the ejection ended, but only a good probe readmits
    n.apply(HealthReport("a", True, models=("m",)), 106.0, SETTINGS)
    assert n.available(106.0)
    n.record(fail, 107.0, SETTINGS, may_eject=True)
    n.record(fail, 107.0, SETTINGS, may_eject=True)
    assert n.ejected_until == 117.0  # doubled
    for t in (120.0, 140.0):
        n.apply(HealthReport("a", True, models=("m",)), t, SETTINGS)
        n.record(fail, t, SETTINGS, may_eject=True)
        n.record(fail, t, SETTINGS, may_eject=True)
    assert n.ejected_until == 160.0  # capped at 20 s


def test_refused_connection_ejects_at_once_but_never_the_last_node():
    n = node("a")
    refused = Outcome(False, 502, "refused", connect_failed=True)
    assert not n.record(refused, 1.0, SETTINGS, may_eject=False)
    assert n.available(1.0)
    assert n.record(refused, 1.0, SETTINGS, may_eject=True)


def test_client_errors_and_disconnects_do_not_count():
    n = node("a")
    for outcome in (Outcome(False, 404, "no model"), Outcome(False, 499, "client left")):
        for _ in range(5):
            assert not n.record(outcome, 1.0, SETTINGS, may_eject=True)
    assert n.failures == 0 and n.available(1.0)


def test_success_resets_failures_and_measures_speed():
    n = node("a")
    n.record(Outcome(False, 500), 1.0, SETTINGS, may_eject=True)
    n.record(Outcome(True, 200, tokens=100, seconds=2.0), 1.0, SETTINGS, may_eject=True)
    assert n.failures == 0 and n.sec_per_token == pytest.approx(0.02)
    n.record(Outcome(True, 200, tokens=100, seconds=1.0), 1.0, SETTINGS, may_eject=True)
    assert 0.01 < n.sec_per_token < 0.02  # a moving average


def test_dead_nodes_are_probed_with_exponential_backoff():
    n = node("a")
    bad = HealthReport("a", False, detail="refused")
    pauses = []
    for _ in range(6):
        n.apply(bad, 0.0, SETTINGS)
        pauses.append(n.next_probe)
    assert pauses == [5, 10, 20, 40, 40, 40]


def test_llama_server_slots_set_the_limit():
    n = node("a")
    n.apply(HealthReport("a", True, models=("m",), extra={"api": "openai", "slots": 2}), 0.0,
            SETTINGS)
    assert n.limit == 2 and n.api == "openai"


def test_hooks_through_the_plugin_manager(pm, emulator):
    from sollol.config import load_config
    from sollol.core.plugin_manager import collect_named
    from sollol.core.processes import free_port

    kinds = collect_named(pm, "sollol_register_backend_kinds", "backend kind")
    assert kinds["ollama"][0].api == "ollama" and kinds["openai"][0].api == "openai"
    assert kinds["ollama"][1] == "ollama_pool"
    node = emulator(models=["m"])
    settings = [s for s, _ in collect_named(pm, "sollol_register_settings", "config key").values()]
    config = load_config(settings, overrides={"ollama_nodes": [node.address]})
    found = [b for result in pm.hook.sollol_discover_backends(config=config) for b in result or ()]
    backend = next(b for b in found if b.id == node.address)
    report = pm.hook.sollol_check_health(backend=backend, timeout=5.0)
    assert report.healthy and report.models == ("m:latest",) and report.version == "0.33.0"
    closed = parse_node(f"openai://127.0.0.1:{free_port()}")
    refused = pm.hook.sollol_check_health(backend=closed, timeout=2.0)
    assert not refused.healthy and "connection failed" in refused.detail


def test_a_down_node_lists_no_loaded_models_and_no_speed() -> None:
    """Issue 28, finding 9: what a node has loaded and how fast it is are live facts; once a
    probe finds it down, `sollol nodes`, `sollol status` and the dashboard show neither."""
    n = node("a", spt=0.02, loaded=("m",))
    up = n.snapshot(1.0)
    assert up["loaded"] == ["m"]
    assert up["tokens_per_second"] == pytest.approx(50.0)
    n.apply(HealthReport("a", False, detail="connection refused"), 2.0, SETTINGS)
    down = n.snapshot(3.0)
    assert down["health"] == "down"
    assert down["loaded"] == [] and down["running"] == [] and down["tokens_per_second"] is None
    assert down["models"] == up["models"]  # what it serves is still known, for the notes
