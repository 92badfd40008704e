"""SOLLOL: a hybrid cluster orchestrator for local LLMs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sollol")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
