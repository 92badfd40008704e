"""A key's model globs, held for every model a request may end up using and for every name it
is shown.

A name a client sends can turn into other models before a node sees it: an alias
(`model_aliases`) stands for its target, and `model_fallbacks` are tried in turn when a model
cannot serve (sollol/core/aliases.py). A key limited to some models (`api_keys` `models`) reaches
through a name only the models its globs match, by their names and by their targets: the others
are skipped, never tried, and a request left with none is refused (403) in words that do not name
them. Listings and "did you mean" show a name only if the key could use it, alias and all.

Every place that turns a name into a model asks here: the dispatcher for each request
(sollol/forwarding/dispatch.py), the model lists (sollol/gateway/info.py), the suggestions of a
404 (`ClusterRuntime.not_found`) and `/api/show`'s `details.parent_model`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from sollol.core.access import AccessKey
from sollol.core.aliases import Target, aliases, targets
from sollol.core.names import canonical
from sollol.errors import Forbidden

Visible = Callable[[str], bool]
"""Whether a key may see (and so use) a model name, alias targets included."""


def refused(key: AccessKey, model: str) -> Forbidden:
    """The 403 for a name the key's globs do not match."""
    return Forbidden(f"key {key.name!r} may not use model {model[:200]!r}")


def usable(key: AccessKey | None, target: Target) -> bool:
    """Whether `key` may use one step of a request's chain: its name and the model it means."""
    return key is None or (key.allows_model(target.name) and key.allows_model(target.model))


def scoped_targets(config: Mapping[str, Any] | Any, model: str,
                   key: AccessKey | None) -> list[Target]:
    """The models a request naming `model` tries, in order (`aliases.targets`), less those
    `key` may not use; Forbidden when the name itself or every step is out of its scope."""
    if key is not None and not key.allows_model(model):
        raise refused(key, model)
    chain = targets(config, model)
    if key is None or not key.limited:
        return chain
    kept = [target for target in chain if usable(key, target)]
    if not kept:
        raise Forbidden(f"key {key.name!r} may not use model {model[:200]!r}: it stands for a "
                        "model outside the key's model globs")
    return kept


def visible_names(config: Mapping[str, Any] | Any, key: AccessKey | None) -> Visible | None:
    """The test a name must pass to be shown to `key` (None: every name is); an alias passes
    only when its target does too."""
    if key is None or not key.limited:
        return None
    table = aliases(config)

    def visible(name: str) -> bool:
        if not key.allows_model(name):
            return False
        alias = table.get(canonical(name))
        return alias is None or key.allows_model(alias.model)

    return visible


def visible_entries(config: Mapping[str, Any] | Any, key: AccessKey | None,
                    entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A model listing (`/api/tags`, `/api/ps`, `/v1/models`) as `key` may see it: entries it
    could use, their `alias_of` and `details.parent_model` included."""
    visible = visible_names(config, key)
    if visible is None:
        return entries
    out = []
    for entry in entries:
        name = str(entry.get("name") or entry.get("model") or "")
        target = entry.get("alias_of")
        if not visible(name) or (isinstance(target, str) and not visible(target)):
            continue
        details = entry.get("details")
        parent = details.get("parent_model") if isinstance(details, dict) else None
        if isinstance(parent, str) and parent and not visible(parent):
            entry = {**entry, "details": {**details, "parent_model": ""}}
        out.append(entry)
    return out


def visible_show(body: bytes, visible: Visible | None) -> bytes:
    """An `/api/show` reply without a `details.parent_model` that `visible` hides (a model
    created from one the key may not use names it there)."""
    if visible is None or b"parent_model" not in body:
        return body
    try:
        data = json.loads(body)
    except ValueError:
        return body
    details = data.get("details") if isinstance(data, dict) else None
    parent = details.get("parent_model") if isinstance(details, dict) else None
    if not isinstance(parent, str) or not parent or visible(parent):
        return body
    return json.dumps({**data, "details": {**details, "parent_model": ""}}).encode()
