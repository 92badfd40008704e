"""What the pool's scheduler looks up instead of scanning every node: which nodes hold a model,
which have a free slot, and a `ModelTable` per model (and capability set) of their numbers."""

from __future__ import annotations

import attrs

from .node import Node
from .table import ModelTable
from .waiters import canonical

MAX_TABLES = 1024
"""Tables kept at once (one per model and capability set asked for); a table is cheap to build."""


@attrs.define
class NodeIndex:
    """Indexes over the pool's member nodes (`nodes` is the member table's own dict, only read)."""

    nodes: dict[str, Node]
    free: set[Node] = attrs.field(factory=set)
    """Member nodes that are available with a free slot (decisions look only at these)."""
    stamp: int = 0
    """Bumped by every change a table may depend on; `hard` by those it must see at once."""
    hard: int = 0
    _holders: dict[str, list[Node]] | None = None
    """Nodes by the (canonical) models they hold; None when it must be rebuilt."""
    _tables: dict[tuple[str, frozenset[str]], ModelTable] = attrs.field(factory=dict)

    def models_changed(self) -> None:
        self._holders = None

    def rebuild(self, now: float) -> None:
        """Nodes joined or left, or their limits changed: re-mark every one."""
        self._holders = None
        for node in [*self.free, *self.nodes.values()]:
            self.mark(node, now, hard=True)

    def force(self) -> None:
        """Tables must not be reused after this change (e.g. a capability found missing)."""
        self.stamp += 1
        self.hard = self.stamp

    def mark(self, node: Node, now: float, *, hard: bool = False) -> None:
        """Record a change of `node`: its place in the free set, and the tables' staleness."""
        if (self.nodes.get(node.id) is node and node.in_flight < node.cap
                and node.available(now)):
            self.free.add(node)
        else:
            self.free.discard(node)
        self.stamp += 1
        if hard:
            self.hard = self.stamp

    def holders(self, model: str) -> list[Node]:
        """The nodes that hold `model` (healthy or not)."""
        if self._holders is None:
            index: dict[str, dict[str, Node]] = {}
            for node in self.nodes.values():
                for name in node.models:
                    index.setdefault(canonical(name), {})[node.id] = node
            self._holders = {name: list(nodes.values()) for name, nodes in index.items()}
        return self._holders.get(canonical(model), [])

    def table(self, model: str, now: float, needs: frozenset[str], *, avg_tokens: float,
              cold_penalty: float) -> ModelTable:
        key = (canonical(model), needs)  # a node that cannot do what is asked is never in it
        table = self._tables.get(key)
        if table is None or not table.fresh(self.stamp, self.hard, now):
            nodes = [n for n in self.holders(model)
                     if n.available(now) and not n.missing(model, needs)]
            self._tables.pop(key, None)
            table = self._tables[key] = ModelTable.build(
                nodes, model, avg_tokens=avg_tokens, cold_penalty=cold_penalty,
                stamp=self.stamp, now=now)
            while len(self._tables) > MAX_TABLES:
                del self._tables[next(iter(self._tables))]
        return table
