"""Which actors the Ray cluster should run now: pure, from the alive nodes and the settings.

Each rpc-server actor is pinned to its node with a hard NodeAffinitySchedulingStrategy rather
than a STRICT_SPREAD placement group: a placement group is a fixed set of bundles made once,
while Ray's nodes come and go; one actor per node, named after the node, follows them one by one
(a new node gets its actor on the next look, a dead one's actor just leaves) and still never puts
two on one node. Pool models are placed by Ray ("SPREAD") where their CPUs fit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

RPC = "rpc"
POOL = "pool"


@attrs.frozen
class RayNodeInfo:
    """An alive Ray node as `ray.nodes()` lists it."""

    node_id: str
    ip: str
    gpus: int = 0

    @classmethod
    def from_ray(cls, entry: Mapping[str, Any]) -> RayNodeInfo:
        resources = entry.get("Resources") or {}
        return cls(entry["NodeID"], entry.get("NodeManagerAddress", ""),
                   int(resources.get("GPU", 0)))


@attrs.frozen
class Slot:
    """One actor the plan wants: an rpc-server on a node (one GPU of it) or a pool model."""

    key: str
    kind: str
    node_id: str | None = None
    gpu: bool = False
    model: str | None = None
    path: str | None = None

    @property
    def backend_id(self) -> str:
        """Its backend's id in the routes: `rpc:ray-NODE8[-gN]` or `ray-MODEL`."""
        if self.kind == POOL:
            return f"ray-{self.model}"
        return "rpc:ray-" + self.key.removeprefix("rpc/").replace("/", "-")

    def actor_name(self, gateway: str) -> str:
        """Its actor's name in the `sollol` namespace (`gateway` keeps two gateways apart)."""
        return f"sollol-{gateway}-" + self.key.replace("/", "-")


def alive_nodes(entries: Iterable[Mapping[str, Any]]) -> list[RayNodeInfo]:
    return [RayNodeInfo.from_ray(e) for e in entries if e.get("Alive")]


def wanted(nodes: Iterable[RayNodeInfo], rpc_per: str,
           pool_models: Mapping[str, str]) -> list[Slot]:
    """The actors for these nodes: per node, per GPU or none; one per pool model."""
    slots = []
    for node in nodes:
        short = node.node_id[:12]
        if rpc_per == "node":
            slots.append(Slot(f"rpc/{short}", RPC, node.node_id))
        elif rpc_per == "gpu":
            slots += [Slot(f"rpc/{short}/g{i}", RPC, node.node_id, gpu=True)
                      for i in range(node.gpus)]
    slots += [Slot(f"pool/{name}", POOL, model=name, path=path)
              for name, path in sorted(pool_models.items())]
    return slots
