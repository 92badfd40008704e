"""Whether the pool can serve a request: which nodes list the model and can do what it needs."""

from __future__ import annotations

from collections.abc import Collection, Iterable

from sollol.core.capabilities import EMBEDDING, describe
from sollol.errors import ModelNotFound, NoRouteAvailable, NotSupported
from sollol.models import RouteRequest
from sollol.routes import POOL, Placement

from .node import Node
from .waiters import Waiter


def placement(nodes: Iterable[Node], request: RouteRequest) -> Placement:
    """The pool's answer for `request` (see sollol/core/placement.py)."""
    everyone = list(nodes)
    model, needs = request.model, request.needs
    holders = [n for n in everyone if n.has_model(model)]
    if not holders:
        unsure = [n for n in everyone if not (n.probed and n.healthy)]
        if unsure:
            return Placement(POOL, None, f"no reachable pool node lists it; {len(unsure)} "
                             "node(s) are down or not probed yet and might")
        return Placement(POOL, False, f"none of the {len(everyone)} pool nodes lists it")
    gaps = [n.missing(model, needs) for n in holders]
    if all(gaps):
        return Placement(POOL, True, unable_message(holders, model, needs),
                         frozenset().union(*gaps))
    return Placement(POOL, True, f"pool node(s) {', '.join(n.id for n in holders)} list it")


def unable_message(holders: Collection[Node], model: str, needs: frozenset[str]) -> str:
    """Why no node holding `model` can serve a request needing `needs`, naming each node's kind."""
    parts = []
    for node in holders:
        gap = node.missing(model, needs)
        hint = (" (start it with --embeddings and a --pooling other than none)"
                if node.server == "llama-server" and EMBEDDING in gap else "")
        parts.append(f"{node.id} ({node.server or node.backend.kind}) lacks "
                     f"{describe(gap)}{hint}")
    return f"no pool node holding {model!r} supports {describe(needs)}: " + "; ".join(parts)


def unservable(scope: Collection[Node], waiter: Waiter, now: float) -> Exception:
    """Why none of `scope` (the pinned node, or every member) can take `waiter`'s request now:
    none supports what it needs, none holds the model, all holders are excluded, or they are down.
    """
    model, needs = waiter.request.model, waiter.request.needs
    holders = [n for n in scope if n.has_model(model)]
    able = [n for n in holders if not n.missing(model, needs)]
    if holders and not able:
        return NotSupported(unable_message(holders, model, needs))
    holders = able
    if scope and not holders and all(n.probed and n.healthy for n in scope):
        where = f"node {waiter.backend}" if waiter.backend else "any pool node"
        return ModelNotFound(f"model '{model}' not found on {where}")
    if holders and all(n.id in waiter.exclude for n in holders if n.available(now)) \
            and any(n.available(now) for n in holders):
        return NoRouteAvailable(f"no other pool node holds {model!r} "
                                f"(already tried {', '.join(sorted(waiter.exclude))})")
    down = "; ".join(f"{n.id}: {n.detail}" for n in (holders or scope)) or "no nodes"
    return NoRouteAvailable(f"no healthy pool node can serve {model!r} ({down})")
