"""What a build is: the sdist version, the GPU backend, its CMake flags and targets.

The CPU build's flags and targets are exactly those of the first releases, so its cache key (and
every cache already filled) stays the same. A GPU backend adds its one CMake switch and, unless
asked for more, builds only `ggml-rpc-server`: the GPU work happens in the rpc-servers, and a
CPU `llama-server` coordinates them.
"""

from __future__ import annotations

import hashlib
import json

import attrs

from sollol.errors import BuildError
from sollol.llamacpp.layout import RPC_NAMES, SERVER_NAME

SDIST_VERSION = "11434.0.0"
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",  # two self-contained programs, no .so files to keep beside them
    "-DGGML_RPC=ON",
    "-DGGML_NATIVE=OFF",  # portable: the cache may be shared with other CPUs (CI runners)
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # otherwise the build downloads a web UI
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DGGML_CCACHE=OFF",
)
ALL_TARGETS = (SERVER_NAME, RPC_NAMES[0])
TARGETS = ALL_TARGETS
"""The CPU build's targets (kept under this name: it is part of the CPU cache key)."""

BACKEND_FLAGS: dict[str, tuple[str, ...]] = {
    "cpu": (),
    "cuda": ("-DGGML_CUDA=ON",),
    "rocm": ("-DGGML_HIP=ON",),
    "vulkan": ("-DGGML_VULKAN=ON",),
    "metal": ("-DGGML_METAL=ON",),
}
BACKENDS = tuple(BACKEND_FLAGS)
BACKEND_PATCHES: dict[str, tuple[str, ...]] = {"vulkan": ("vulkan-layer-settings",)}
"""Source patches a backend needs (sollol.llamacpp.patches); part of the cache key."""


@attrs.frozen
class BuildSpec:
    """What to build: sdist version, CMake flags, targets and patches; together the cache key."""

    version: str = SDIST_VERSION
    flags: tuple[str, ...] = attrs.field(default=CMAKE_FLAGS, converter=tuple)
    targets: tuple[str, ...] = attrs.field(default=TARGETS, converter=tuple)
    patches: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    backend: str = "cpu"

    @property
    def key(self) -> str:
        described: dict[str, object] = {"flags": self.flags, "targets": self.targets}
        if self.patches:  # absent for the CPU build, whose key predates patches
            described["patches"] = self.patches
        text = json.dumps(described)
        return f"{self.version}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"

    @property
    def has_server(self) -> bool:
        return SERVER_NAME in self.targets


def spec_for(backend: str, *, with_server: bool = False, version: str = SDIST_VERSION) -> BuildSpec:
    """The build of one backend; a GPU backend builds llama-server too only when asked."""
    if backend not in BACKEND_FLAGS:
        msg = f"unknown backend {backend!r}: choose one of auto, {', '.join(BACKENDS)}"
        raise BuildError(msg)
    if backend == "cpu":
        return BuildSpec(version=version)
    targets = ALL_TARGETS if with_server else (RPC_NAMES[0],)
    return BuildSpec(version=version, flags=CMAKE_FLAGS + BACKEND_FLAGS[backend],
                     targets=targets, patches=BACKEND_PATCHES.get(backend, ()), backend=backend)
