"""Where a model is: which routes could serve a request for it, and why (or why not)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sollol.core.capabilities import describe
from sollol.core.names import spellings
from sollol.models import RouteRequest, RouteState
from sollol.routes import Placement

__all__ = ["Placement", "from_state"]  # Placement is public, in sollol.routes


def from_state(state: RouteState, request: RouteRequest) -> Placement:
    """The placement of a route that does not answer itself: from what its backends list."""
    names = spellings(request.model)
    holders = [b for b in state.backends if names & b.models]
    if not holders:
        # a route that does not answer for itself may serve models it does not list
        # (e.g. by file path): it is never ruled out on its listing alone
        return Placement(state.name, None, "no backend lists it, and the route does not say "
                                            "whether it can serve it otherwise")
    missing = _missing_everywhere(holders, request)
    reason = f"{len(holders)} backend(s) list it ({', '.join(b.backend.id for b in holders)})"
    if missing:
        reason += f", but none of them supports {describe(missing)}"
    return Placement(state.name, True, reason, missing)


def _missing_everywhere(holders: Iterable[Any], request: RouteRequest) -> frozenset[str]:
    """What the request needs that no holder can do (a holder able to do all leaves none)."""
    gaps = [b.missing(request.model, request.needs) for b in holders]
    if not gaps or any(not gap for gap in gaps):
        return frozenset()
    return frozenset().union(*gaps)
