"""SOLLOL: a hybrid cluster orchestrator for local LLMs.

The library API is imported lazily (`sollol.Cluster`, `sollol.Task`, ...), so `import sollol`
stays cheap for the CLI and has no side effects.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from sollol import _moved

try:
    __version__ = version("sollol")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

if TYPE_CHECKING:
    from sollol.client.aggregate import concatenate
    from sollol.client.facade import Cluster
    from sollol.client.fanout import FanOut
    from sollol.client.streaming import Chunk
    from sollol.client.tasks import Response, Task, TaskResult
    from sollol.errors import SollolError

_LAZY = {"Cluster": "sollol.client.facade", "FanOut": "sollol.client.fanout",
         "Task": "sollol.client.tasks", "Chunk": "sollol.client.streaming",
         "Response": "sollol.client.tasks", "TaskResult": "sollol.client.tasks",
         "concatenate": "sollol.client.aggregate", "SollolError": "sollol.errors"}

__all__ = ["Chunk", "Cluster", "FanOut", "Response", "SollolError", "Task", "TaskResult",
           "__version__", "concatenate"]

_moved.install()


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sollol' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
