"""SOLLOL: a hybrid cluster orchestrator for local LLMs.

The library API is imported lazily (`sollol.Cluster`, `sollol.Task`, ...), so `import sollol`
stays cheap for the CLI and has no side effects.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("sollol")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

if TYPE_CHECKING:
    from sollol.aggregate import concatenate
    from sollol.client import Cluster
    from sollol.errors import SollolError
    from sollol.fanout import FanOut
    from sollol.streaming import Chunk
    from sollol.tasks import Response, Task, TaskResult

_LAZY = {"Cluster": "sollol.client", "FanOut": "sollol.fanout", "Task": "sollol.tasks",
         "Chunk": "sollol.streaming",
         "Response": "sollol.tasks", "TaskResult": "sollol.tasks",
         "concatenate": "sollol.aggregate", "SollolError": "sollol.errors"}

__all__ = ["Chunk", "Cluster", "FanOut", "Response", "SollolError", "Task", "TaskResult",
           "__version__", "concatenate"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sollol' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
