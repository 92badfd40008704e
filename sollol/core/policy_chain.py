"""Building the configured routing policy by name, following policies that delegate to others."""

from __future__ import annotations

import inspect
from typing import Any

from sollol.errors import ConfigError
from sollol.routes import Policy


def build_policy(
    name: str, policies: dict[str, tuple[Any, str]], settings: dict[str, Any],
    chain: tuple[str, ...] = (),
) -> Policy:
    """Build policy `name` from `policy_settings[name]`.

    A factory that takes a `policies` keyword gets a function building another policy by name,
    for policies that delegate (such as "pinned" falling through); cycles are config errors.
    """
    factory, _plugin = policies[name]
    table = settings.get(name, {})
    table = dict(table) if isinstance(table, dict) else table  # a factory reports a non-table

    def build(other: str) -> Policy:
        key = f"policy_settings.{name}"
        if other not in policies:
            known = ", ".join(sorted(policies))
            raise ConfigError(key, other, f"the name of a registered policy ({known})")
        if other in (*chain, name):
            loop = " -> ".join((*chain, name, other))
            raise ConfigError(key, other, f"a policy that does not lead back to itself ({loop})")
        return build_policy(other, policies, settings, (*chain, name))

    try:
        delegates = "policies" in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a callable Python cannot introspect takes settings only
        delegates = False
    return factory(table, policies=build) if delegates else factory(table)
