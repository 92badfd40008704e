"""What a request for a model would do now, told without sending it (`sollol route`,
`GET /sollol/route`).

It walks the same chain a request does (sollol/forwarding/dispatch.py): the model through its
alias, then its `model_fallbacks` in order. A step the request would leave at once (no route
holds the model, no route can serve it, the queue is full, or the chosen route says it fails
now) sends the explanation on to the next step, as it sends the request.
"""

from __future__ import annotations

from typing import Any, Protocol

from sollol.core import capabilities
from sollol.core.aliases import Alias, Target, targets
from sollol.errors import ModelNotFound, NoRouteAvailable, Overloaded
from sollol.models import RouteDecision, RouteRequest


class Decides(Protocol):
    """What explaining needs of the runtime (sollol.core.runtime.ClusterRuntime)."""

    @property
    def config(self) -> Any: ...

    async def decide(self, request: RouteRequest) -> RouteDecision: ...

    async def decide_for_alias(self, request: RouteRequest, alias: Alias) -> RouteDecision: ...


LEAVES = (ModelNotFound, NoRouteAvailable, Overloaded)
"""What makes a request try the next model of its chain (as `Dispatcher.open` does)."""


async def explain(cluster: Decides, model: str, *, context: int | None = None,
                  endpoint: str = "chat") -> dict[str, Any]:
    """The decision of the step that would serve, with the steps left before it in `tried`;
    when none would, the error the request would get (after the same tries) is raised."""
    chain = targets(cluster.config, model)
    tried: list[dict[str, Any]] = []
    last_error: ModelNotFound | NoRouteAvailable | Overloaded | None = None
    for index, target in enumerate(chain):
        request = RouteRequest(model=target.model, endpoint=endpoint,  # type: ignore[arg-type]
                               context_length=context, needs=capabilities.needs(endpoint, {}))
        try:
            decision = await _decide(cluster, request, target)
        except LEAVES as exc:
            last_error = exc
            tried.append({"model": target.name, "status": exc.status, "error": str(exc)})
            continue
        fails = _fails_now(decision)
        if fails:
            error = f"the {decision.route} route fails at once: {fails}"
            last_error = NoRouteAvailable(error, numbers={"placement": decision.placement})
            tried.append({"model": target.name, "route": decision.route, "status": 503,
                          "error": error})
            continue
        answer: dict[str, Any] = {"model": model, "context_length": context}
        if target.alias is not None:
            answer["alias_of"] = target.model
        if index:
            answer["fallback"] = target.name
        answer.update(decision.as_dict())
        if tried:
            answer["tried"] = tried
        return answer
    assert last_error is not None  # every step of a non-empty chain ends above or here
    steps = "; ".join(f"{t['model']}: {t['error']}" for t in tried[:-1])
    if steps:  # the error the request would get, after the same tries (as dispatch words it)
        last_error.args = (f"{last_error} (after trying {steps})",)
    raise last_error


async def _decide(cluster: Decides, request: RouteRequest,
                  target: Target) -> RouteDecision:
    alias = target.alias
    if alias is not None and (alias.route or alias.nodes):
        return await cluster.decide_for_alias(request, alias)
    return await cluster.decide(request)


def _fails_now(decision: RouteDecision) -> str:
    place = decision.placement.get(decision.route) or {}
    return str(place.get("fails_now") or "")
