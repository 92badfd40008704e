"""The embeddable client: `sollol.Cluster`, tasks, streams and fan-out, in process or remote."""

from __future__ import annotations

from importlib import import_module
from typing import Any


def __getattr__(name: str) -> Any:
    # `from sollol.client import Cluster` named the facade module before the layered tree
    if name != "Cluster":
        raise AttributeError(f"module 'sollol.client' has no attribute {name!r}")
    return import_module("sollol.client.facade").Cluster
