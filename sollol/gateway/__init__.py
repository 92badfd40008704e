"""The HTTP gateway: Ollama- and OpenAI-compatible endpoints in front of a `Cluster`."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sollol.gateway.app import Gateway
    from sollol.gateway.server import GatewayThread, serve

__all__ = ["Gateway", "GatewayThread", "serve"]
# Imported on first use: the library (`sollol.Cluster`) must not pay for uvicorn at import time.
_LAZY = {"Gateway": "sollol.gateway.app", "GatewayThread": "sollol.gateway.server",
         "serve": "sollol.gateway.server"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sollol.gateway' has no attribute {name!r}")
    return getattr(import_module(module), name)
