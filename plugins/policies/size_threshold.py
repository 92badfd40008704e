"""`size-threshold`: big models (by parameter count or file size) are sharded, the rest pooled."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import attrs

from sollol.core.units import format_bytes, format_count, parse_bytes, parse_count
from sollol.errors import ConfigError
from sollol.models import ModelInfo, RouteDecision, RouteRequest, RouteState
from sollol.routes import POOL, SHARDING

from .common import UNKNOWN_CHOICES, decided, unknown_size
from .policy_settings import SettingsReader, default

DEFAULT_MIN_PARAMETERS = 13 * 10**9


@attrs.frozen
class SizeThreshold:
    """Shard a model whose size is at or above the threshold; sizes come only from metadata."""

    name: ClassVar[str] = "size-threshold"

    measure: Literal["parameters", "file_size"] = "parameters"
    threshold: int = DEFAULT_MIN_PARAMETERS
    unknown: str = POOL

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> SizeThreshold:
        """Build from `policy_settings.size-threshold` (min_parameters | min_file_size, unknown)."""
        read = SettingsReader(cls.name, settings)
        by_count = read.get("min_parameters", None, parse_count)
        by_file = read.get("min_file_size", None, parse_bytes)
        unknown = read.choice("unknown", default(cls, "unknown"), UNKNOWN_CHOICES)
        read.finish()
        if by_count is not None and by_file is not None:
            raise ConfigError(read.key("min_file_size"), settings["min_file_size"],
                              "only one of min_parameters and min_file_size to be set")
        if by_file is not None:
            return cls("file_size", by_file, unknown)
        return cls("parameters", DEFAULT_MIN_PARAMETERS if by_count is None else by_count, unknown)

    def decide(
        self, request: RouteRequest, model: ModelInfo | None, routes: Mapping[str, RouteState]
    ) -> RouteDecision:
        """Pool below the threshold, sharding at or above it; the fallback when size is unknown."""
        if self.measure == "parameters":
            size = model.parameter_count if model else None
            what, show = "parameter count", format_count
        else:
            size = model.file_size if model else None
            what, show = "file size", format_bytes
        numbers: dict[str, Any] = {
            "measure": self.measure, "threshold": self.threshold, "size": size,
            "source": model.source if model else None,
        }
        if size is None:
            return unknown_size(self.name, self.unknown, request.model, what, routes, numbers)
        numbers["size_known"] = True
        big = size >= self.threshold
        route = SHARDING if big else POOL
        relation = "at or above" if big else "below"
        source = f" (from {model.source})" if model and model.source else ""
        reason = (f"{request.model} has a {what} of {show(size)}{source}, {relation} the "
                  f"{show(self.threshold)} threshold: the {route} route")
        return decided(route, self.name, reason, routes, numbers)
