"""Real llama.cpp binaries: find them (config, env, PATH, cache) or build them into the cache."""

from sollol.llamacpp.build import (
    CMAKE_FLAGS,
    SDIST_VERSION,
    BuildProgress,
    BuildSpec,
    ProgressCallback,
    install,
)
from sollol.llamacpp.locate import (
    ENV_VAR,
    INSTALL_COMMAND,
    Binaries,
    cache_root,
    find_binaries,
    find_cached,
)

__all__ = [
    "CMAKE_FLAGS",
    "ENV_VAR",
    "INSTALL_COMMAND",
    "SDIST_VERSION",
    "Binaries",
    "BuildProgress",
    "BuildSpec",
    "ProgressCallback",
    "cache_root",
    "find_binaries",
    "find_cached",
    "install",
]
