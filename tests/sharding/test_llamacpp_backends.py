"""GPU backends of the llama.cpp build: flags, detection, bad input, half-way failures."""

from __future__ import annotations

import json
import stat
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from sollol.cli import build_cli
from sollol.errors import BuildError
from sollol.llamacpp import (
    BuildSpec,
    cmake_commands,
    install,
    install_backend,
    patches,
    spec_for,
    toolchain,
)
from sollol.llamacpp.devices import Device, parse
from sollol.llamacpp.locate import find_gpu_rpc_server, for_serving
from sollol.llamacpp.spec import CMAKE_FLAGS

MAIN = '#include <stdio.h>\nint main(void) { puts("fake build 1"); return 0; }\n'
TWO_PROGRAMS = """cmake_minimum_required(VERSION 3.14)
project(fake C)
set(CMAKE_RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
add_executable(llama-server main.c)
add_executable(ggml-rpc-server rpc.c)
"""


def sdist(tmp_path: Path, rpc_source: str = MAIN, extra: dict[str, str] | None = None) -> Path:
    """An sdist-shaped archive of a tiny CMake project: llama-server builds from main.c,
    ggml-rpc-server from rpc.c (broken on request, so a build fails half-way)."""
    source = tmp_path / "sdist-src" / "fake-0" / "llama.cpp"
    source.mkdir(parents=True)
    files = {"CMakeLists.txt": TWO_PROGRAMS, "main.c": MAIN, "rpc.c": rpc_source,
             **(extra or {})}
    for name, text in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(text)
    archive = tmp_path / "fake-0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source.parent, arcname="fake-0")
    return archive


def entries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.is_dir())


# ------------------------------------------------------------------------------ build specs


def test_the_cpu_build_keeps_its_flags_targets_and_cache_key() -> None:
    """The default install must reuse the CPU binaries already cached by earlier releases."""
    assert spec_for("cpu") == BuildSpec()
    assert BuildSpec().key == "11434.0.0-7ccfa28e1dd9"
    assert BuildSpec().targets == ("llama-server", "ggml-rpc-server")
    assert BuildSpec().flags == CMAKE_FLAGS


@pytest.mark.parametrize(("backend", "switch"), [
    ("cuda", "-DGGML_CUDA=ON"), ("rocm", "-DGGML_HIP=ON"), ("vulkan", "-DGGML_VULKAN=ON"),
    ("metal", "-DGGML_METAL=ON")])
def test_each_gpu_backend_adds_one_switch_and_builds_only_the_rpc_server(
    backend: str, switch: str,
) -> None:
    spec = spec_for(backend)
    assert spec.flags == (*CMAKE_FLAGS, switch)
    assert spec.targets == ("ggml-rpc-server",)
    assert spec.backend == backend
    assert spec_for(backend, with_server=True).targets == ("llama-server", "ggml-rpc-server")
    keys = {spec.key, spec_for(backend, with_server=True).key, BuildSpec().key}
    assert len(keys) == 3  # side by side in the cache


def test_the_exact_cmake_commands_per_backend(tmp_path: Path) -> None:
    src, build = Path("/src/llama.cpp"), Path("/work/build")
    common = ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DGGML_RPC=ON",
              "-DGGML_NATIVE=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
              "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
              "-DGGML_CCACHE=OFF"]
    configure = ["cmake", "-S", "/src/llama.cpp", "-B", "/work/build", "-G", "Ninja", *common]

    cpu = cmake_commands(BuildSpec(), src, build, jobs=2)
    assert list(cpu.configure) == configure
    assert list(cpu.build) == ["cmake", "--build", "/work/build", "--target", "llama-server",
                               "ggml-rpc-server", "-j", "2"]
    rpc_only = ["cmake", "--build", "/work/build", "--target", "ggml-rpc-server", "-j", "16"]
    for backend, switch in (("cuda", "-DGGML_CUDA=ON"), ("vulkan", "-DGGML_VULKAN=ON"),
                            ("metal", "-DGGML_METAL=ON")):
        commands = cmake_commands(spec_for(backend), src, build, jobs=16)
        assert list(commands.configure) == [*configure, switch]
        assert list(commands.build) == rpc_only
        assert commands.env == {"NINJA_STATUS": "[%p] "}

    hipconfig = tmp_path / "hipconfig"  # ROCm's compiler is found through hipconfig
    hipconfig.write_text('#!/bin/sh\ncase "$1" in -l) echo /opt/rocm/llvm/bin;; '
                         '-R) echo /opt/rocm;; esac\n')
    hipconfig.chmod(hipconfig.stat().st_mode | stat.S_IEXEC)
    rocm = cmake_commands(spec_for("rocm"), src, build, jobs=16, ninja=False,
                          which=lambda name: str(hipconfig) if name == "hipconfig" else None)
    assert list(rocm.configure) == [*configure[:5], "-G", "Unix Makefiles", *common,
                                    "-DGGML_HIP=ON"]
    assert rocm.env == {"NINJA_STATUS": "[%p] ", "HIPCXX": "/opt/rocm/llvm/bin/clang",
                        "HIP_PATH": "/opt/rocm"}


# ------------------------------------------------------------------------------- detection


def probe(programs: tuple[str, ...] = (), files: tuple[str, ...] = (),
          platform: str = "linux") -> toolchain.Probe:
    def glob(pattern: str) -> list[str]:
        import fnmatch

        return [f for f in files if fnmatch.fnmatch(f, pattern)]

    return REAL_PROBE(which=lambda n: f"/usr/bin/{n}" if n in programs else None,
                           exists=lambda p: p in files, glob=glob, platform=platform)


REAL_PROBE = toolchain.Probe
VULKAN_TOOLKIT = ("/usr/include/vulkan/vulkan.hpp",
                  "/usr/share/cmake/SPIRV-Headers/SPIRV-HeadersConfig.cmake")


@pytest.mark.parametrize(("machine", "backend", "words"), [
    (probe(("nvidia-smi", "nvcc")), "cuda", "cuda: GPU seen by nvidia-smi, toolkit present"),
    (probe(("nvidia-smi",)), "cpu", "a cuda GPU is visible (nvidia-smi) but the CUDA backend "
                                    "needs nvcc"),
    (probe(("rocminfo", "hipcc"), ("/dev/kfd",)), "rocm", "rocm: GPU seen by rocminfo"),
    (probe(platform="darwin"), "metal", "metal: GPU seen by macOS"),
    (probe(("glslc",), (*VULKAN_TOOLKIT, "/usr/share/vulkan/icd.d/radeon_icd.x86_64.json",
                        "/dev/dri/renderD128")), "vulkan", "Vulkan driver radeon_icd"),
    # Mesa's lavapipe is a Vulkan device on the CPU: not a reason to build for Vulkan
    (probe(("glslc",), (*VULKAN_TOOLKIT, "/usr/share/vulkan/icd.d/lvp_icd.x86_64.json")),
     "cpu", "no GPU is visible"),
    (probe(), "cpu", "no GPU is visible"),
])
def test_auto_chooses_by_visible_gpu_and_toolkit(machine: toolchain.Probe, backend: str,
                                                 words: str) -> None:
    choice = toolchain.choose(machine)
    assert choice.backend == backend
    assert words in choice.reason


@pytest.mark.parametrize(("backend", "machine", "install_words"), [
    ("cuda", probe(), "nvidia-cuda-toolkit"),
    ("rocm", probe(), "apt-get install hipcc libhipblas-dev librocblas-dev"),
    ("vulkan", probe(("glslc",)), "apt-get install libvulkan-dev spirv-headers glslc"),
    ("metal", probe(), "only on macOS"),
])
def test_a_missing_toolkit_fails_before_building_in_one_line(
    backend: str, machine: toolchain.Probe, install_words: str, tmp_path: Path,
) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(BuildError) as caught:
        install_backend(backend, probe=machine, cache=cache, sdist=tmp_path / "never-read")
    message = str(caught.value)
    assert "\n" not in message and install_words in message
    assert message.startswith(f"cannot build the {backend} backend")
    assert not cache.exists()


def test_cli_unknown_backend_and_missing_toolkit_are_one_line_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result = CliRunner().invoke(build_cli(), ["llamacpp", "install", "--backend", "opencl"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: unknown backend 'opencl': choose one of auto, cpu, cuda, rocm, vulkan, metal"]
    monkeypatch.setattr(toolchain, "Probe", probe)  # a machine with no toolkit at all
    result = CliRunner().invoke(build_cli(), ["llamacpp", "install", "--backend", "rocm"])
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: cannot build the rocm backend") and "hipcc" in line


# ------------------------------------------------------------------------- building, failing


def test_a_gpu_build_is_the_rpc_server_beside_the_cpu_coordinator(tmp_path: Path) -> None:
    cache, archive = tmp_path / "cache", sdist(tmp_path)
    spec = BuildSpec(version="test", flags=("-DFAKE_GPU=ON",), targets=("ggml-rpc-server",),
                     backend="vulkan")
    built = install(spec=spec, cache=cache, sdist=archive, jobs=1)
    cpu_key = BuildSpec(version="test").key
    assert entries(cache) == sorted([cpu_key, spec.key])
    assert built.llama_server == cache / cpu_key / "bin" / "llama-server"
    assert built.rpc_server == cache / spec.key / "bin" / "ggml-rpc-server"
    assert built.backend == "vulkan"
    assert not (cache / spec.key / "bin" / "llama-server").exists()  # only what SOLLOL runs
    info = json.loads((cache / spec.key / "build.json").read_text())
    assert info["backend"] == "vulkan" and info["targets"] == ["ggml-rpc-server"]
    assert "backend" not in json.loads((cache / cpu_key / "build.json").read_text())
    assert find_gpu_rpc_server(cache) == ("vulkan", built.rpc_server)


def test_a_build_failing_half_way_shows_the_log_tail_and_leaves_no_entry(tmp_path: Path) -> None:
    """llama-server compiles, then ggml-rpc-server does not: nothing of it may be cached."""
    cache = tmp_path / "cache"
    archive = sdist(tmp_path, rpc_source="int main(void) { return }  /* broken */\n")
    spec = BuildSpec(version="test", flags=("-DFAKE_GPU=ON",), backend="vulkan",
                     targets=("llama-server", "ggml-rpc-server"))
    with pytest.raises(BuildError) as caught:
        install(spec=spec, cache=cache, sdist=archive, jobs=1)
    message = str(caught.value)
    assert message.startswith("build failed")
    assert "rpc.c" in message  # the compiler's complaint, from the log tail
    assert "full log:" in message
    assert entries(cache) == []  # neither the entry nor the work folder with main.c's program
    assert (cache / "last-failed-build.log").is_file()
    assert find_gpu_rpc_server(cache) is None


def test_the_vulkan_patch_is_idempotent_and_refuses_unknown_source(tmp_path: Path) -> None:
    patch = patches.PATCHES["vulkan-layer-settings"]
    tree = tmp_path / "llama.cpp"
    target = tree / patch.path
    target.parent.mkdir(parents=True)
    target.write_text("// before\n" + patch.before + "// after\n")
    assert patches.apply(patch.name, tree) is True
    text = target.read_text()
    assert "#if VK_HEADER_VERSION >= 261" in text and "#else" in text
    assert patches.apply(patch.name, tree) is False  # already applied: unchanged
    assert target.read_text() == text
    target.write_text("// a newer llama.cpp\n")
    with pytest.raises(BuildError, match="vulkan-layer-settings"):
        patches.apply(patch.name, tree)


def test_a_patch_that_does_not_apply_fails_the_build_and_leaves_nothing(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    spec = BuildSpec(version="test", flags=("-DFAKE_GPU=ON",), backend="vulkan",
                     targets=("llama-server", "ggml-rpc-server"),
                     patches=("vulkan-layer-settings",))
    with pytest.raises(BuildError, match="patch vulkan-layer-settings"):
        install(spec=spec, cache=cache, sdist=sdist(tmp_path), jobs=1)
    assert entries(cache) == []


# --------------------------------------------------------------------------------- devices


def test_device_listings_parse_as_llama_cpp_prints_them() -> None:
    text = ("error: unknown device: sollol-list-devices\navailable devices:\n"
            "  Vulkan0: llvmpipe (LLVM 15.0.6, 256 bits) (2048 MiB, 2048 MiB free)\n"
            "  CPU: AMD EPYC (24105 MiB, 24000 MiB free)\nNo devices found\n")
    vulkan, cpu = parse(text)
    assert vulkan == Device("Vulkan0", "llvmpipe (LLVM 15.0.6, 256 bits)", 2048 * 2**20,
                            2048 * 2**20)
    assert vulkan.is_gpu and not cpu.is_gpu
    assert cpu.line() == "CPU: AMD EPYC (24105 MiB, 24000 MiB free)"


def test_rpc_serve_uses_a_gpu_build_from_the_cache(tmp_path: Path) -> None:
    from sollol.llamacpp import Binaries

    cache = tmp_path / "cache"
    gpu = cache / "11434.0.0-aaaa"
    (gpu / "bin").mkdir(parents=True)
    (gpu / "bin" / "ggml-rpc-server").write_text("#!/bin/sh\n")
    (gpu / "bin" / "ggml-rpc-server").chmod(0o755)
    (gpu / "build.json").write_text(json.dumps({"backend": "cuda"}))
    cpu = Binaries(Path("/c/llama-server"), Path("/c/ggml-rpc-server"), "cache")
    assert for_serving(cpu, cache).rpc_server == gpu / "bin" / "ggml-rpc-server"
    assert for_serving(cpu, cache).backend == "cuda"
    on_path = Binaries(Path("/p/llama-server"), Path("/p/ggml-rpc-server"), "PATH", "unknown")
    assert for_serving(on_path, cache) == on_path  # the user's own binaries win


def test_cli_auto_prints_what_it_found_and_why_it_chose(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    nvidia_without_nvcc = probe(("nvidia-smi",))
    monkeypatch.setattr(toolchain, "Probe", lambda: nvidia_without_nvcc)
    chosen: list[str] = []

    def fake_install(backend: str, **_kwargs: object) -> object:
        chosen.append(backend)
        raise BuildError("stop here")  # the build itself is tested above

    monkeypatch.setattr("sollol.llamacpp.install_backend", fake_install)
    result = CliRunner().invoke(build_cli(), ["llamacpp", "install", "--backend", "auto"])
    assert chosen == ["cpu"]
    lines = result.output.splitlines()
    assert "auto: cuda: GPU seen by nvidia-smi; no toolkit (the CUDA backend needs nvcc" \
        in lines[0]
    assert any(line.startswith("auto: vulkan: no GPU seen") for line in lines)
    assert "auto: chose cpu: a cuda GPU is visible (nvidia-smi) but the CUDA backend needs " \
           "nvcc" in result.output
