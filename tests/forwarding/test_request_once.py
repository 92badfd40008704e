"""Every way a forwarded request can end reports it exactly once: one `RouteEvent` to the
`sollol_request_routed` hook, one `Outcome` per lease taken, and one `InFlight.finish`.

The dispatcher runs in the test's own event loop over emulated and scripted nodes behind a
`StaticRoute` (which keeps each lease's outcome); a test plugin collects the events.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import pytest

from sollol.config import load_config
from sollol.core.plugin_manager import get_plugin_manager
from sollol.core.runtime import ClusterRuntime
from sollol.errors import ModelNotFound, NoRouteAvailable, RequestError
from sollol.forwarding.dispatch import Dispatcher, Reply, StreamReply
from sollol.forwarding.inflight import InFlight
from sollol.forwarding.validate import validate
from sollol.hookspecs import hookimpl
from sollol.models import RouteEvent
from sollol.routes import Outcome
from sollol.testing.static_route import RoutesPlugin, StaticRoute, Upstream

MESSAGES = [{"role": "user", "content": "hi"}]


class Routed:
    """A test plugin: every RouteEvent the cluster records."""

    def __init__(self) -> None:
        self.events: list[RouteEvent] = []

    @hookimpl
    def sollol_request_routed(self, event: RouteEvent) -> None:
        self.events.append(event)


@attrs.define
class Rig:
    """A dispatcher over one static route, and what it reported."""

    dispatcher: Dispatcher
    route: StaticRoute
    routed: Routed
    finishes: list[Outcome]

    @property
    def event(self) -> RouteEvent:
        """The one event recorded (fails when there are none or several)."""
        [event] = self.routed.events
        assert len(self.finishes) == 1
        return event

    @property
    def outcomes(self) -> list[Outcome]:
        return [outcome for _backend, outcome in self.route.outcomes]


@pytest.fixture
def strict_finish(monkeypatch: pytest.MonkeyPatch) -> list[Outcome]:
    """Every `InFlight.finish` call; a call on a request already finished fails the test."""
    calls: list[Outcome] = []
    original = InFlight.finish

    def finish(self: InFlight, outcome: Outcome) -> None:
        assert not self.finished, "a request was finished a second time"
        calls.append(outcome)
        original(self, outcome)

    monkeypatch.setattr(InFlight, "finish", finish)
    return calls


@pytest.fixture
async def rig(strict_finish: list[Outcome]) -> AsyncIterator[Callable[..., Any]]:
    """Factory: `await rig(upstreams, **config)` -> a started Rig; all stopped at the end."""
    running: list[tuple[Dispatcher, ClusterRuntime, Any, RoutesPlugin, Routed]] = []

    async def make(upstreams: list[Upstream], **config: Any) -> Rig:
        route = StaticRoute("pool", upstreams)
        pm = get_plugin_manager(load_entry_points=False)
        plugin, routed = RoutesPlugin([route]), Routed()
        pm.register(plugin, name="test-routes")
        pm.register(routed, name="test-routed")
        cluster = ClusterRuntime(config=load_config(overrides=config), pm=pm)
        await cluster.start()
        dispatcher = Dispatcher.create(cluster)
        running.append((dispatcher, cluster, pm, plugin, routed))
        return Rig(dispatcher, route, routed, strict_finish)

    try:
        yield make
    finally:
        for dispatcher, cluster, pm, plugin, routed in reversed(running):
            await dispatcher.close()
            await cluster.stop()
            pm.unregister(routed)
            pm.unregister(plugin)


def chat(stream: bool, model: str = "m") -> Any:
    body = {"model": model, "messages": MESSAGES, "stream": stream}
    return validate("ollama", "chat", json.dumps(body).encode())


async def read_all(reply: Reply) -> bytes:
    assert isinstance(reply, StreamReply)
    try:
        return b"".join([chunk async for chunk in reply])
    finally:
        await reply.aclose()


async def test_a_whole_reply_is_reported_once(emulator, rig) -> None:
    node = emulator(models=["m"])
    r = await rig([Upstream("n1", node.url, "ollama", ("m",))])
    reply = await r.dispatcher.open(chat(stream=False))
    assert reply.status == 200 and not isinstance(reply, StreamReply)
    assert (r.event.status, r.event.backend, r.event.attempts) == (200, "n1", 1)
    [outcome] = r.outcomes
    assert outcome.ok and outcome.seconds is not None


async def test_a_whole_stream_is_reported_once_when_it_ends(emulator, rig) -> None:
    node = emulator(models=["m"])
    r = await rig([Upstream("n1", node.url, "ollama", ("m",))])
    reply = await r.dispatcher.open(chat(stream=True))
    assert isinstance(reply, StreamReply) and not r.routed.events  # not over yet
    body = await read_all(reply)
    assert json.loads(body.splitlines()[-1])["done"] is True
    assert r.event.ok and r.event.ttft_s is not None and r.event.tokens
    [outcome] = r.outcomes
    assert outcome.ok and outcome.first_byte_sent


@pytest.mark.parametrize("fault", [{"error_status": 500}, {"refuse": True}])
async def test_a_failure_before_the_first_byte_then_a_retry_is_one_event(
        emulator, rig, fault) -> None:
    faulty, spare = emulator(models=["m"]), emulator(models=["m"])
    faulty.set_faults(**fault)
    r = await rig([Upstream("faulty", faulty.url, "ollama", ("m",)),
                   Upstream("spare", spare.url, "ollama", ("m",))])
    r.route.in_flight["spare"] = 1  # the least busy upstream is leased first: the faulty one
    reply = await r.dispatcher.open(chat(stream=False))
    assert reply.status == 200
    kind = "http_5xx" if "error_status" in fault else "connect"
    assert (r.event.backend, r.event.attempts, r.event.failovers) == ("spare", 2, (kind,))
    assert [(b, o.ok) for b, o in r.route.outcomes] == [("faulty", False), ("spare", True)]


async def test_every_backend_failing_is_one_event_with_every_failure(emulator, rig) -> None:
    nodes = [emulator(models=["m"]) for _ in range(2)]
    for node in nodes:
        node.set_faults(error_status=503)
    r = await rig([Upstream(f"n{i}", n.url, "ollama", ("m",)) for i, n in enumerate(nodes)])
    reply = await r.dispatcher.open(chat(stream=False))
    assert reply.status == 503
    assert r.event.status == 503 and r.event.attempts == 2
    assert "n0: HTTP 503" in str(r.event.error) and "n1: HTTP 503" in str(r.event.error)
    assert [o.status for o in r.outcomes] == [503, 503]


async def test_a_client_error_from_the_backend_is_one_event(emulator, rig) -> None:
    node = emulator(models=["m"])
    node.set_faults(error_status=400)
    r = await rig([Upstream("n1", node.url, "ollama", ("m",))])
    reply = await r.dispatcher.open(chat(stream=False))
    assert reply.status == 400 and r.event.status == 400 and r.event.attempts == 1
    assert [o.status for o in r.outcomes] == [400]


async def test_a_capability_the_backend_lacks_is_one_event(scripted_node, rig) -> None:
    node = scripted_node(api="openai", models=("m",), embeddings=False)
    r = await rig([Upstream("n1", node.url, "openai", ("m",))])
    call = validate("ollama", "embed", json.dumps({"model": "m", "input": "x"}).encode())
    reply = await r.dispatcher.open(call)
    assert reply.status == 501 and r.event.status == 501
    [outcome] = r.outcomes
    assert outcome.unsupported == "embedding"


async def test_a_stream_cut_mid_way_is_one_event(emulator, rig) -> None:
    node = emulator(models=["m"])
    node.set_faults(drop_after=2)
    r = await rig([Upstream("n1", node.url, "ollama", ("m",))])
    body = await read_all(await r.dispatcher.open(chat(stream=True)))
    assert b"stream cut" in body
    assert r.event.status == 502 and "stream cut" in str(r.event.error)
    [outcome] = r.outcomes
    assert outcome.status == 502 and outcome.first_byte_sent


async def test_a_stalled_stream_is_one_event(emulator, rig) -> None:
    node = emulator(models=["m"])
    node.set_faults(stall_after=1)
    r = await rig([Upstream("n1", node.url, "ollama", ("m",))], stream_idle_timeout=0.3)
    body = await read_all(await r.dispatcher.open(chat(stream=True)))
    assert b"stalled" in body
    assert r.event.status == 504
    assert [o.status for o in r.outcomes] == [504]


async def test_a_request_timeout_before_the_first_byte_is_one_event(emulator, rig) -> None:
    node = emulator(models=["m"])
    node.set_faults(hang=True)
    r = await rig([Upstream("n1", node.url, "ollama", ("m",))], request_timeout=0.3)
    with pytest.raises(NoRouteAvailable, match="timed out"):
        await r.dispatcher.open(chat(stream=True))
    assert r.event.status == 503 and r.event.failovers == ()
    [outcome] = r.outcomes
    assert outcome.status == 504


async def test_a_client_gone_before_the_first_byte_is_one_event(emulator, rig) -> None:
    node = emulator(models=["m"])
    node.set_faults(hang=True)
    r = await rig([Upstream("n1", node.url, "ollama", ("m",))])
    task = asyncio.create_task(r.dispatcher.open(chat(stream=True)))
    while not r.route.in_flight.get("n1"):  # until the backend is leased
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert r.event.status == 499 and r.event.backend == "n1"
    [outcome] = r.outcomes
    assert outcome.status == 499 and not outcome.first_byte_sent


async def test_a_client_gone_mid_stream_is_one_event(emulator, rig) -> None:
    node = emulator(models=["m"], response_tokens=50)
    r = await rig([Upstream("n1", node.url, "ollama", ("m",))])
    reply = await r.dispatcher.open(chat(stream=True))
    assert isinstance(reply, StreamReply)
    pieces = aiter(reply)
    assert await anext(pieces)
    await reply.aclose("client disconnected")
    await reply.aclose("client disconnected")  # the gateway may close twice: still one end
    assert r.event.status == 499 and r.event.error == "client disconnected"
    assert [o.status for o in r.outcomes] == [499]


async def test_an_unknown_model_is_one_event_without_a_lease(emulator, rig) -> None:
    node = emulator(models=["m"])
    r = await rig([Upstream("n1", node.url, "ollama", ("m",))])
    with pytest.raises(ModelNotFound):
        await r.dispatcher.open(chat(stream=False, model="other"))
    assert r.event.status == 404 and r.event.backend is None and r.event.attempts == 0
    assert r.outcomes == []


async def test_a_request_the_backend_cannot_take_is_one_event(emulator, rig) -> None:
    node = emulator(models=["m"])
    r = await rig([Upstream("n1", node.url, "anthropic", ("m",))])
    with pytest.raises(RequestError, match="cannot be sent to"):
        await r.dispatcher.open(validate("openai", "responses", json.dumps(
            {"model": "m", "input": "hi"}).encode()))
    assert r.event.status == 400 and r.event.backend == "n1"
    assert [o.status for o in r.outcomes] == [400]


async def test_a_fault_of_the_gateway_is_one_event_and_not_the_backends(
        scripted_node, rig, monkeypatch) -> None:
    node = scripted_node(api="openai", models=("m",))
    r = await rig([Upstream("n1", node.url, "openai", ("m",))])

    async def unreadable(self: StaticRoute, model: str) -> None:
        raise ValueError("not a GGUF file")

    # an OpenAI node has no /api/show: the gateway answers from the model's facts, which fail
    monkeypatch.setattr(StaticRoute, "model_info", unreadable)
    call = validate("ollama", "show", json.dumps({"model": "m"}).encode())
    with pytest.raises(ValueError, match="not a GGUF file"):
        await r.dispatcher.open(call)
    assert r.event.status == 500 and "gateway error" in str(r.event.error)
    [outcome] = r.outcomes
    assert outcome.status == 499  # a failure the route must not count against the node
