"""Reading one policy's table from `policy_settings`, with errors that name the exact key.

A policy writes each default once, on its attrs class; `default(cls, field)` hands it to the
reader.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs

from sollol.core.names import closest
from sollol.errors import ConfigError

T = TypeVar("T")


@attrs.define
class SettingsReader:
    """Takes keys out of `policy_settings.<policy>` one by one; `finish()` rejects the rest."""

    policy: str
    values: Mapping[str, Any]
    _seen: set[str] = attrs.field(factory=set)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.values, Mapping):
            raise ConfigError(f"policy_settings.{self.policy}", self.values, "a table")

    def key(self, name: str) -> str:
        """The full config key of one of this policy's settings."""
        return f"policy_settings.{self.policy}.{name}"

    def get(self, name: str, default: T, convert: Callable[[Any], T], expected: str = "") -> T:
        """The value of `name` passed through `convert` (which raises ValueError(expected))."""
        self._seen.add(name)
        if name not in self.values:
            return default
        value = self.values[name]
        try:
            return convert(value)
        except (ValueError, TypeError) as exc:
            raise ConfigError(self.key(name), value, expected or str(exc)) from None

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        """A string that must be one of `choices`."""
        def convert(value: Any) -> str:
            if value not in choices:
                raise ValueError
            return value
        return self.get(name, default, convert, "one of " + ", ".join(map(repr, choices)))

    def finish(self) -> None:
        """Fail on keys nobody asked for: a typo must not be silently ignored."""
        unknown = sorted(set(self.values) - self._seen)
        if unknown:
            known = ", ".join(sorted(self._seen)) or "none"
            close = closest(str(unknown[0]), self._seen, limit=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(self.key(unknown[0]), self.values[unknown[0]],
                              f"a known key of this policy ({known}){hint}")


def default(cls: type, field: str) -> Any:
    """The default of attrs class `cls`'s field `field` (the one place it is written)."""
    return attrs.fields_dict(cls)[field].default


def positive_int(value: Any) -> int:
    """An integer above 0 (floats like 4096.0 are accepted; inf and NaN are not)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError("an integer above 0")
    return value


def fraction(value: Any) -> float:
    """A number from 0 up to (not including) 10, as a share of something (0.1 = 10%)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 10:
        raise ValueError("a number from 0 to 10 (0.1 means 10%)")
    return float(value)


def boolean(value: Any) -> bool:
    """A real TOML boolean."""
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def policy_name(value: Any) -> str:
    """A non-empty policy name."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("the name of a registered policy")
    return value.strip()
