"""Where a model is: which routes could serve a request for it, and why (or why not)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from sollol.core.capabilities import describe
from sollol.core.names import spellings
from sollol.models import RouteRequest, RouteState


@attrs.frozen
class Placement:
    """One route's answer to "could you serve this request?".

    `holds` is True (the route has the model), False (it does not) or None (it cannot tell
    now, e.g. its nodes are down); `missing` is what the request needs that no backend of the
    route holding the model can do.
    """

    route: str
    holds: bool | None
    reason: str
    missing: frozenset[str] = attrs.field(default=frozenset(), converter=frozenset)

    @property
    def able(self) -> bool:
        """The route holds the model and can do what the request needs."""
        return self.holds is True and not self.missing

    @property
    def excluded(self) -> bool:
        """The route certainly cannot serve the request."""
        return self.holds is False or bool(self.missing)

    def as_dict(self) -> dict[str, Any]:
        verdict = ("can serve" if self.able else "cannot tell" if self.holds is None
                   else "cannot serve")
        out: dict[str, Any] = {"verdict": verdict, "why": self.reason}
        if self.missing:
            out["missing"] = sorted(self.missing)
        return out


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
