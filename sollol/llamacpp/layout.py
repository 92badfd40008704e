"""Names and places shared by the build and the lookup: program names, the cache, its marker."""

from __future__ import annotations

from pathlib import Path

import platformdirs

SERVER_NAME = "llama-server"
RPC_NAMES = ("ggml-rpc-server", "rpc-server")
"""The RPC server was renamed upstream; older builds and docs use `rpc-server`."""
INSTALL_COMMAND = "sollol llamacpp install"
MARKER = "build.json"
"""Written last into a finished cache entry; a folder without it is not a usable entry."""


def cache_root() -> Path:
    """Where `sollol llamacpp install` keeps its builds (one folder per version and flags)."""
    return Path(platformdirs.user_cache_dir("sollol")) / "llama.cpp"
