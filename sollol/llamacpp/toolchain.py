"""Which GPU backend a machine can build: what `--backend auto` finds, and what each one needs.

Detection reads only the file system and PATH (no program is run), so it is quick and safe to
call from `doctor` and `rpc serve`. A GPU counts as visible when its driver shows it; a toolkit
counts as present when its compiler and headers are there.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
from collections.abc import Callable, Sequence

import attrs

from sollol.errors import BuildError

Which = Callable[[str], str | None]
Exists = Callable[[str], bool]
Glob = Callable[[str], Sequence[str]]

CUDA_HINT = ("the CUDA backend needs nvcc: install the NVIDIA CUDA Toolkit (Debian: apt-get "
             "install nvidia-cuda-toolkit; or https://developer.nvidia.com/cuda-downloads) and "
             "put its bin/ on PATH")
ROCM_HINT = ("the ROCm backend needs hipcc and hipBLAS: install AMD ROCm (Debian 13/Ubuntu 24.04: "
             "apt-get install hipcc libhipblas-dev librocblas-dev; or AMD's ROCm installer) and "
             "put its bin/ on PATH")
VULKAN_HINT = ("the Vulkan backend needs the Vulkan headers and loader, SPIR-V headers and glslc: "
               "apt-get install libvulkan-dev spirv-headers glslc (and a driver, e.g. "
               "mesa-vulkan-drivers)")
METAL_HINT = "the Metal backend builds only on macOS (with the Xcode command line tools)"
_PREFIXES = ("/usr", "/usr/local")
_CPU_ICDS = ("lvp_icd",)
"""Vulkan drivers that run on the CPU (Mesa's lavapipe): a device, but not a GPU."""


@attrs.frozen
class Probe:
    """The parts of the machine detection looks at; tests pass fakes."""

    which: Which = shutil.which
    exists: Exists = os.path.exists
    glob: Glob = glob.glob
    platform: str = sys.platform


@attrs.frozen
class Finding:
    """One backend on this machine: is its GPU visible, is its toolkit there, what is missing."""

    backend: str
    gpu: str | None
    """What shows the GPU (e.g. "nvidia-smi"), None when no GPU of this kind is visible."""
    toolkit: bool
    missing: str = ""
    """What to install when the toolkit is absent."""


@attrs.frozen
class Choice:
    """The backend `auto` chose, with every finding and the reason in one sentence."""

    backend: str
    reason: str
    findings: tuple[Finding, ...]


def find(probe: Probe | None = None) -> tuple[Finding, ...]:
    """What this machine has for each GPU backend, in order of preference."""
    p = probe or Probe()
    return (_cuda(p), _rocm(p), _metal(p), _vulkan(p))


def choose(probe: Probe | None = None) -> Choice:
    """`--backend auto`: the first backend whose GPU is visible and whose toolkit is present."""
    findings = find(probe)
    for f in findings:
        if f.gpu and f.toolkit:
            return Choice(f.backend, f"{f.backend}: GPU seen by {f.gpu}, toolkit present", findings)
    unbuildable = [f for f in findings if f.gpu]
    if unbuildable:
        f = unbuildable[0]
        why = f"cpu: a {f.backend} GPU is visible ({f.gpu}) but {f.missing}"
        return Choice("cpu", why, findings)
    return Choice("cpu", "cpu: no GPU is visible (no NVIDIA, AMD, Apple or Vulkan GPU driver)",
                  findings)


def require(backend: str, probe: Probe | None = None) -> None:
    """Raise BuildError, in one line naming what to install, if `backend` cannot be built here."""
    if backend == "cpu":
        return
    finding = next(f for f in find(probe) if f.backend == backend)
    if not finding.toolkit:
        raise BuildError(f"cannot build the {backend} backend: {finding.missing}")


def visible_gpus(probe: Probe | None = None) -> tuple[Finding, ...]:
    """The GPU kinds this machine shows (CPU Vulkan devices like lavapipe are not GPUs)."""
    return tuple(f for f in find(probe) if f.gpu)


def _cuda(p: Probe) -> Finding:
    gpu = "nvidia-smi" if p.which("nvidia-smi") else (
        "/proc/driver/nvidia" if p.exists("/proc/driver/nvidia/version") else None)
    nvcc = p.which("nvcc") or p.exists("/usr/local/cuda/bin/nvcc")
    return Finding("cuda", gpu, bool(nvcc), "" if nvcc else CUDA_HINT)


def _rocm(p: Probe) -> Finding:
    gpu = "rocminfo" if p.which("rocminfo") and p.exists("/dev/kfd") else (
        "/dev/kfd" if p.exists("/dev/kfd") else None)
    hip = p.which("hipcc") or p.exists("/opt/rocm/bin/hipcc")
    return Finding("rocm", gpu, bool(hip), "" if hip else ROCM_HINT)


def _metal(p: Probe) -> Finding:
    mac = p.platform == "darwin"
    return Finding("metal", "macOS" if mac else None, mac, "" if mac else METAL_HINT)


def _vulkan(p: Probe) -> Finding:
    icds = [os.path.basename(f) for d in ("/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d")
            for f in p.glob(f"{d}/*.json")]
    gpu_icds = [i for i in icds if not i.startswith(_CPU_ICDS)]
    render = bool(p.glob("/dev/dri/renderD*"))
    gpu = f"Vulkan driver {gpu_icds[0]}" if gpu_icds and render else None
    headers = any(p.exists(f"{prefix}/include/vulkan/vulkan.hpp") for prefix in _PREFIXES)
    spirv = any(p.glob(f"{prefix}/{d}/cmake/SPIRV-Headers/SPIRV-HeadersConfig.cmake")
                for prefix in _PREFIXES for d in ("share", "lib", "lib/*"))
    toolkit = bool(p.which("glslc")) and headers and spirv
    return Finding("vulkan", gpu, toolkit, "" if toolkit else VULKAN_HINT)
