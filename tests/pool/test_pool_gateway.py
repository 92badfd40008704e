"""End to end: the official clients -> the gateway -> the real pool route -> emulated nodes,
including nodes that refuse, fail, hang or drop mid-stream."""

from __future__ import annotations

import concurrent.futures
import json
import time

import httpx
import ollama
import openai
import pytest

from sollol.testing.emulator import EmulatedModel, Faults

MSG = [{"role": "user", "content": "hello there"}]
FAST_HEALTH = {"health_interval": 0.3, "pool_health_timeout": 0.5}


def client(gw, timeout=30):
    return ollama.Client(gw.url, timeout=timeout)


def test_clients_through_the_pool(emulator, pool_gateway):
    a = emulator(models=["chat:1b", EmulatedModel("embed", capabilities=("embedding",))])
    b = emulator(models=["chat:1b", EmulatedModel("other", loaded=False)])
    gw = pool_gateway(a.address, b.address)
    c = client(gw)
    assert {m.model for m in c.list().models} == {"chat:1b", "embed:latest", "other:latest"}
    assert {m.model for m in c.ps().models} == {"chat:1b", "embed:latest"}
    parts = list(c.chat(model="chat:1b", messages=MSG, stream=True))
    assert parts[-1].done and parts[-1].eval_count == 12
    assert c.generate(model="other", prompt="x").done  # only b has it
    assert b.stats()["requests"]["/api/generate"] == 1
    assert len(c.embed(model="embed", input=["a", "b"]).embeddings) == 2
    with pytest.raises(ollama.ResponseError) as err:
        c.chat(model="ghost", messages=MSG)
    assert err.value.status_code == 404
    reply = httpx.post(gw.url + "/api/chat", json={"model": "chat:1b", "messages": MSG,
                                                   "stream": False})
    assert reply.headers["x-sollol-route"] == "pool"
    assert reply.headers["x-sollol-backend"] in (a.address, b.address)
    oai = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0, timeout=30)
    answer = oai.chat.completions.create(model="chat:1b", messages=MSG)
    assert answer.choices[0].message.content
    nodes = httpx.get(gw.url + "/sollol/nodes").json()
    assert {n["id"] for n in nodes["nodes"]} == {a.address, b.address}


def test_requests_spread_over_the_nodes(emulator, pool_gateway):
    nodes = [emulator(models=["m"], tokens_per_second=200, response_tokens=20)
             for _ in range(3)]
    gw = pool_gateway(*(n.address for n in nodes))
    c = client(gw)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda _: c.generate(model="m", prompt="x"), range(12)))
    assert all(r.done for r in replies)
    counts = [n.stats()["requests"].get("/api/generate", 0) for n in nodes]
    assert sum(counts) == 12 and all(count >= 2 for count in counts)


def test_later_turns_of_a_conversation_stay_on_its_node(emulator, pool_gateway):
    nodes = {n.address: n for n in (emulator(models=["m"]), emulator(models=["m"]))}
    gw = pool_gateway(*nodes)

    def turn(messages):
        reply = httpx.post(gw.url + "/api/chat", timeout=30,
                           json={"model": "m", "messages": messages, "stream": False})
        assert reply.status_code == 200
        return reply.headers["x-sollol-backend"], reply.json()["message"]

    history = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    home, answer = turn(history)
    (other,) = set(nodes) - {home}
    nodes[home].set_faults(extra_latency=0.2)  # balancing alone now prefers the other node
    for i in range(3):
        history += [answer, {"role": "user", "content": f"and then {i}?"}]
        backend, answer = turn(history)
        assert backend == home  # the conversation stays where its KV cache is...
        assert turn([{"role": "user", "content": f"unrelated {i}"}])[0] == other  # ...others move


def test_refusing_node_is_skipped_and_ejected(emulator, pool_gateway):
    bad = emulator(models=["m"])
    good = emulator(models=["m"])
    gw = pool_gateway(bad.address, good.address, health_interval=60)
    bad.set_faults(refuse=True)  # after the first probe: only requests can find out
    c = client(gw)
    for _ in range(6):
        assert c.chat(model="m", messages=MSG).done
    snapshot = httpx.get(gw.url + "/sollol/nodes").json()
    by_id = {n["id"]: n for n in snapshot["nodes"]}
    assert by_id[bad.address]["health"] == "ejected"
    assert by_id[bad.address]["ejected_until"] is not None
    assert good.stats()["requests"]["/api/chat"] == 6


def test_failing_node_is_retried_elsewhere_and_ejected(emulator, pool_gateway):
    bad = emulator(models=["m"], faults=Faults(error_status=500))
    good = emulator(models=["m"])
    gw = pool_gateway(bad.address, good.address, pool_eject_failures=2, health_interval=60)
    c = client(gw)
    for _ in range(8):
        assert c.generate(model="m", prompt="x").done
    assert bad.stats()["injected"]["status_500"] == 2  # then it was ejected
    by_id = {n["id"]: n for n in httpx.get(gw.url + "/sollol/nodes").json()["nodes"]}
    assert by_id[bad.address]["health"] == "ejected" and by_id[bad.address]["failed"] == 2


def test_only_failing_node_gives_a_clear_error(emulator, pool_gateway):
    bad = emulator(models=["m"], faults=Faults(error_status=500))
    gw = pool_gateway(bad.address)
    with pytest.raises(ollama.ResponseError) as err:
        client(gw).generate(model="m", prompt="x")
    assert err.value.status_code >= 500 and "emulated failure" in str(err.value)


def test_hanging_probe_marks_the_node_down(emulator, pool_gateway):
    hung = emulator(models=["m"], faults=Faults(hang=True, scope="all"))
    good = emulator(models=["m"])
    gw = pool_gateway(hung.address, good.address, **FAST_HEALTH)
    c = client(gw, timeout=20)
    for _ in range(4):
        assert c.chat(model="m", messages=MSG).done
    assert hung.stats()["requests"].get("/api/chat", 0) == 0


def test_hanging_node_never_hangs_a_request_past_the_timeout(emulator, pool_gateway):
    hung = emulator(models=["m"], faults=Faults(hang=True))  # probes fine, requests hang
    good = emulator(models=["m"])
    gw = pool_gateway(hung.address, good.address, request_timeout=1.5, pool_eject_failures=1,
                      health_interval=60)
    c = client(gw, timeout=20)
    outcomes = []
    for _ in range(4):
        started = time.monotonic()
        try:
            outcomes.append(c.chat(model="m", messages=MSG).done)
        except ollama.ResponseError as exc:
            outcomes.append(exc.status_code)
        assert time.monotonic() - started < 10  # generous: the timeout is 1.5 s
    assert outcomes.count(True) >= 3  # at most one request met the hanging node
    assert all(o is True or o >= 500 for o in outcomes)


def test_mid_stream_drop_ends_with_an_error_object(emulator, pool_gateway):
    dropper = emulator(models=["m"], faults=Faults(drop_after=2))
    gw = pool_gateway(dropper.address)
    received = []
    with pytest.raises(ollama.ResponseError, match="stream cut"):
        for part in client(gw).chat(model="m", messages=MSG, stream=True):
            received.append(part)
    assert len(received) == 2 and not received[-1].done


def test_drop_before_the_first_byte_is_retried(emulator, pool_gateway):
    dropper = emulator(models=["m"], faults=Faults(drop_after=0))
    good = emulator(models=["m"])
    gw = pool_gateway(dropper.address, good.address, health_interval=60)
    c = client(gw)
    for _ in range(4):
        parts = list(c.chat(model="m", messages=MSG, stream=True))
        assert parts[-1].done
        assert c.chat(model="m", messages=MSG).done


def test_queue_full_is_429_with_retry_after(emulator, pool_gateway):
    slow = emulator(models=["m"], tokens_per_second=20, response_tokens=40)
    gw = pool_gateway(slow.address, pool_node_concurrency=1, pool_queue_size=0)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        busy = pool.submit(client(gw).generate, model="m", prompt="x")
        deadline = time.monotonic() + 10
        while slow.stats()["in_flight"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        reply = httpx.post(gw.url + "/api/generate", json={"model": "m", "prompt": "y"})
        assert reply.status_code == 429 and int(reply.headers["retry-after"]) >= 1
        assert "queue is full" in reply.json()["error"]
        assert busy.result(30).done


def test_model_management_through_the_gateway(emulator, pool_gateway):
    a, b = emulator(models=["m"]), emulator(models=["m"], library=["m", "shared"])
    gw = pool_gateway(a.address, b.address)
    c = client(gw)
    events = list(c.pull("shared", stream=True))
    assert events[-1].status == "success"
    raw = httpx.post(gw.url + "/api/pull", json={"model": "shared"}).text.splitlines()
    assert {json.loads(line).get("node") for line in raw[:-1]} == {a.address, b.address}
    assert a.stats()["requests"]["/api/pull"] == b.stats()["requests"]["/api/pull"] == 2
    assert "shared:latest" in {m.model for m in c.list().models}
    with pytest.raises(ollama.ResponseError, match="file does not exist"):
        c.pull("only-a")  # b's library lacks it: the summary names the failed node
    reply = httpx.post(gw.url + f"/api/pull?node={a.address}",
                       json={"model": "only-a", "stream": False})
    assert reply.status_code == 200 and reply.json()["nodes"] == {a.address: "success"}
    assert c.copy("shared", "shared-copy").status == "success"
    assert c.delete("shared-copy").status == "success"
    with pytest.raises(ollama.ResponseError) as err:
        c.delete("shared-copy")
    assert err.value.status_code == 404
    created = c.create(model="mario", from_="m", system="You are Mario")
    assert created.status == "success"
    assert httpx.get(gw.url + "/api/pull").status_code == 405
    unknown = httpx.post(gw.url + "/api/pull", json={"model": "x", "nodes": ["10.0.0.1:1"]})
    assert unknown.status_code == 400 and "not configured" in unknown.json()["error"]
