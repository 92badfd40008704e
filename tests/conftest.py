"""The one fixture module that starts real processes for tests, and always stops them.

Sections: core, llama.cpp (binaries, tiny models, store), emulator nodes, gateway, sharding.
Every fixture that starts a process does so through a `ProcessGroup` that is stopped at teardown.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sollol.plugins import SollolPluginManager, get_plugin_manager
from sollol.testing.processes import ProcessGroup

# ---------------------------------------------------------------------------------------- core


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[ProcessGroup]:
    """A process group for one test; everything in it is stopped when the test ends."""
    group = ProcessGroup(log_dir=tmp_path / "logs")
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture(scope="session")
def session_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessGroup]:
    """A process group shared by the whole session (slow-to-start servers)."""
    group = ProcessGroup(log_dir=tmp_path_factory.mktemp("session-logs"))
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture
def pm() -> SollolPluginManager:
    """A fresh plugin manager with every installed plugin."""
    return get_plugin_manager()


@pytest.fixture(autouse=True)
def isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point SOLLOL at an empty config file and clear SOLLOL_* / OLLAMA_HOSTS from the env."""
    import os

    for name in list(os.environ):
        if name.startswith("SOLLOL_") or name in ("OLLAMA_HOSTS", "OLLAMA_MODELS"):
            monkeypatch.delenv(name)
    path = tmp_path / "config" / "config.toml"
    monkeypatch.setenv("SOLLOL_CONFIG", str(path))
    return path


# ----------------------------------------------------------------------------------- llama.cpp


# ------------------------------------------------------------------------------ emulator nodes


# ------------------------------------------------------------------------------------- gateway


# ------------------------------------------------------------------------------------ sharding
