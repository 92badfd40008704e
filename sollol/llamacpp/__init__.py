"""Real llama.cpp binaries: find them (config, env, PATH, cache) or build them into the cache."""

from sollol.llamacpp.build import (
    BuildProgress,
    CMakeCommands,
    ProgressCallback,
    cmake_commands,
    install,
    install_backend,
)
from sollol.llamacpp.devices import Device, llama_server_devices, rpc_server_devices
from sollol.llamacpp.layout import INSTALL_COMMAND, cache_root
from sollol.llamacpp.locate import (
    ENV_VAR,
    Binaries,
    find_binaries,
    find_cached,
    find_gpu_rpc_server,
    for_serving,
)
from sollol.llamacpp.spec import BACKENDS, CMAKE_FLAGS, SDIST_VERSION, BuildSpec, spec_for
from sollol.llamacpp.toolchain import visible_gpus

__all__ = [
    "BACKENDS",
    "CMAKE_FLAGS",
    "ENV_VAR",
    "INSTALL_COMMAND",
    "SDIST_VERSION",
    "Binaries",
    "BuildProgress",
    "BuildSpec",
    "CMakeCommands",
    "Device",
    "ProgressCallback",
    "cache_root",
    "cmake_commands",
    "find_binaries",
    "find_cached",
    "find_gpu_rpc_server",
    "for_serving",
    "install",
    "install_backend",
    "llama_server_devices",
    "rpc_server_devices",
    "spec_for",
    "visible_gpus",
]
