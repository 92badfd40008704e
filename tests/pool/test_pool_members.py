"""The pool's member table in-process: joins, leaves, draining, and what operators pin or remove."""

from __future__ import annotations

from collections.abc import Collection

import pytest
from sollol_plugins.ollama_pool.node import Node
from sollol_plugins.ollama_pool.pool_members import PoolMembers
from sollol_plugins.ollama_pool.pool_settings import PoolSettings

from sollol.errors import BackendNotFound, RequestError
from sollol.models import Backend


class Recorder:
    """Stands in for the route: records the probes asked for and the leaves announced."""

    def __init__(self) -> None:
        self.probed: list[list[str]] = []
        self.gone: list[list[str]] = []

    async def probe(self, nodes: list[Node]) -> None:
        self.probed.append([n.id for n in nodes])

    def changed(self, gone: Collection[Node]) -> None:
        self.gone.append([n.id for n in gone])


def table(**settings) -> tuple[PoolMembers, Recorder]:
    seen = Recorder()
    members = PoolMembers(PoolSettings(**settings), lambda: {"ollama": "ollama"},
                          probe=seen.probe, changed=seen.changed)
    return members, seen


def backend(address: str) -> Backend:
    return Backend(address, "ollama", address)


async def test_new_nodes_are_probed_once_before_they_count_and_known_ones_are_skipped():
    members, seen = table(concurrency=3, memory={"10.0.0.1:11434": 8 << 30})
    assert await members.join([backend("10.0.0.1:11434")]) == ["10.0.0.1:11434"]
    assert await members.join([backend("10.0.0.1:11434"), backend("10.0.0.2:11434")]) \
        == ["10.0.0.2:11434"]
    assert seen.probed == [["10.0.0.1:11434"], ["10.0.0.2:11434"]]
    first = members.nodes["10.0.0.1:11434"]
    assert (first.limit, first.memory_total, first.api) == (3, 8 << 30, "ollama")


async def test_a_removed_node_drains_and_comes_back_as_itself_until_its_last_request_ends():
    members, seen = table()
    await members.join([backend("a:1"), backend("b:1")])
    node = members.nodes["a:1"]
    node.in_flight = 2
    assert members.remove("http://a:1/") == {"removed": [{"id": "a:1", "draining": 2}]}
    assert seen.gone[-1] == ["a:1"]  # the scheduler hears who left
    assert not members.is_member(node) and members.draining == {"a:1": node}
    node.in_flight = 1
    members.drained(node)  # one request still runs on it
    assert members.draining == {"a:1": node}

    await members.add("a:1")  # back before it drained: the same node, its requests counted
    assert members.nodes["a:1"] is node and members.draining == {}
    assert members.is_member(node)

    members.remove("a:1")
    node.in_flight = 0
    members.drained(node)
    assert members.draining == {}
    await members.add("a:1")
    assert members.nodes["a:1"] is not node  # drained and gone: a fresh node


async def test_discovery_keeps_what_an_operator_added_and_never_revives_what_one_removed():
    members, _ = table()
    await members.sync([backend("a:1"), backend("b:1")], prune=True)
    await members.add("c:1")
    members.remove("b:1")
    change = await members.sync([backend("a:1"), backend("b:1")], prune=True)
    assert change == {"added": [], "removed": []}
    assert set(members.nodes) == {"a:1", "c:1"}
    change = await members.sync([backend("d:1")], prune=True)
    assert change == {"added": ["d:1"], "removed": ["a:1"]}
    assert set(members.nodes) == {"c:1", "d:1"}
    # without prune (a periodic re-discovery) nothing is taken out
    assert await members.sync([], prune=False) == {"added": [], "removed": []}
    assert set(members.nodes) == {"c:1", "d:1"}


async def test_operators_get_errors_for_bad_addresses_and_unknown_nodes():
    members, _ = table()
    await members.join([backend("a:1")])
    with pytest.raises(BackendNotFound, match="nodes: a:1"):
        members.remove("nowhere:1")
    with pytest.raises(RequestError):
        await members.add("http://")


async def test_new_settings_move_nodes_on_the_old_default_concurrency_only():
    members, _ = table(concurrency=4)
    await members.join([backend("a:1"), backend("b:1")])
    members.nodes["b:1"].limit = 9  # learned from the node itself
    members.reconfigure(PoolSettings(concurrency=2))
    assert (members.nodes["a:1"].limit, members.nodes["b:1"].limit) == (2, 9)
