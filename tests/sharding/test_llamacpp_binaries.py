"""Finding and building the llama.cpp binaries: lookup order, cache entries, failed builds."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from sollol.cli import build_cli
from sollol.config import Config
from sollol.errors import BinaryNotFound, BuildError
from sollol.llamacpp import (
    INSTALL_COMMAND,
    SDIST_VERSION,
    BuildProgress,
    BuildSpec,
    cache_root,
    find_binaries,
    find_cached,
    install,
)

NO_CONFIG = Config(values={"llama_cpp_dir": None})
FAKE_MAIN = '#include <stdio.h>\nint main(void) { puts("fake build 1"); return 0; }\n'
FAKE_CMAKE = """cmake_minimum_required(VERSION 3.14)
project(fake C)
set(CMAKE_RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
add_executable(llama-server main.c)
add_executable(ggml-rpc-server main.c)
"""


def fake_bin_dir(folder: Path, *names: str) -> Path:
    """A folder of executables with the given names (scripts: enough for a lookup)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = folder / name
        path.write_text("#!/bin/sh\necho fake\n")
        path.chmod(0o755)
    return folder


def fake_sdist(tmp_path: Path, cmake: str = FAKE_CMAKE, main: str = FAKE_MAIN) -> Path:
    """An sdist-shaped archive whose `llama.cpp/` is a tiny CMake project (builds in a second)."""
    source = tmp_path / "sdist-src" / "fake-0" / "llama.cpp"
    source.mkdir(parents=True)
    (source / "CMakeLists.txt").write_text(cmake)
    (source / "main.c").write_text(main)
    archive = tmp_path / "fake-0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source.parent, arcname="fake-0")
    return archive


def test_lookup_order_config_env_path_cache(tmp_path: Path) -> None:
    names = ("llama-server", "ggml-rpc-server")
    configured = fake_bin_dir(tmp_path / "configured", *names)
    from_env = fake_bin_dir(tmp_path / "env", *names)
    on_path = fake_bin_dir(tmp_path / "path", *names)
    cache = tmp_path / "cache"
    entry = fake_bin_dir(cache / BuildSpec().key / "bin", *names).parent
    (entry / "build.json").write_text("{}")
    config = Config(values={"llama_cpp_dir": str(configured)},
                    sources={"llama_cpp_dir": "/etc/sollol.toml"})
    env = {"SOLLOL_LLAMA_CPP_DIR": str(from_env), "PATH": str(on_path)}

    found = find_binaries(config, env=env, cache=cache)
    assert (found.llama_server.parent, found.source) == (configured, "config (/etc/sollol.toml)")
    found = find_binaries(NO_CONFIG, env=env, cache=cache)
    assert (found.rpc_server.parent, found.source) == (from_env, "SOLLOL_LLAMA_CPP_DIR")
    found = find_binaries(NO_CONFIG, env={"PATH": str(on_path)}, cache=cache)
    assert (found.llama_server.parent, found.source) == (on_path, "PATH")
    found = find_binaries(NO_CONFIG, env={"PATH": str(tmp_path / "empty")}, cache=cache)
    assert (found.llama_server.parent, found.source) == (entry / "bin", "cache")


def test_the_env_var_reaches_the_lookup_through_the_config_loader(tmp_path: Path) -> None:
    folder = fake_bin_dir(tmp_path / "bin", "llama-server", "ggml-rpc-server")
    found = find_binaries(env={"SOLLOL_LLAMA_CPP_DIR": str(folder),
                               "SOLLOL_CONFIG": str(tmp_path / "none.toml")})
    assert found.source == "SOLLOL_LLAMA_CPP_DIR"


def test_the_older_rpc_server_name_is_found_on_path(tmp_path: Path) -> None:
    folder = fake_bin_dir(tmp_path / "old", "llama-server", "rpc-server")
    found = find_binaries(NO_CONFIG, env={"PATH": str(folder)}, cache=tmp_path / "cache")
    assert found.rpc_server == folder / "rpc-server"


def test_path_needs_both_programs(tmp_path: Path) -> None:
    folder = fake_bin_dir(tmp_path / "half", "llama-server")
    with pytest.raises(BinaryNotFound, match=INSTALL_COMMAND):
        find_binaries(NO_CONFIG, env={"PATH": str(folder)}, cache=tmp_path / "cache")


def test_a_named_folder_without_the_binaries_is_an_error_naming_the_install_command(
    tmp_path: Path,
) -> None:
    on_path = fake_bin_dir(tmp_path / "path", "llama-server", "ggml-rpc-server")
    half = fake_bin_dir(tmp_path / "half", "llama-server")
    env = {"SOLLOL_LLAMA_CPP_DIR": str(half), "PATH": str(on_path)}
    with pytest.raises(BinaryNotFound, match="ggml-rpc-server not found in") as caught:
        find_binaries(NO_CONFIG, env=env, cache=tmp_path / "cache")
    assert INSTALL_COMMAND in str(caught.value)


def test_an_unfinished_cache_entry_is_ignored(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    fake_bin_dir(cache / BuildSpec().key / "bin", "llama-server", "ggml-rpc-server")
    assert find_cached(cache) is None  # no build.json: the build never finished


def test_install_builds_once_and_then_returns_the_cache_entry(tmp_path: Path) -> None:
    cache, sdist, spec = tmp_path / "cache", fake_sdist(tmp_path), BuildSpec(version="test")
    stale = cache / f".{spec.key}-killed"  # the work folder of an install that was SIGKILLed
    (stale / "build").mkdir(parents=True)
    events: list[BuildProgress] = []
    first = install(progress=events.append, spec=spec, cache=cache, sdist=sdist, jobs=1)
    phases = [e.phase for e in events]
    assert phases[0] == "extract" and phases[-1] == "done"
    assert {"configure", "build", "install"} <= set(phases)
    assert 100 in [e.percent for e in events if e.phase == "build"]  # the compiler's progress
    assert first.source == "cache"
    assert not stale.exists()
    assert first.llama_server == cache / spec.key / "bin" / "llama-server"
    assert subprocess.run([first.rpc_server, "--version"], capture_output=True,
                          text=True, check=True).stdout == "fake build 1\n"
    info = json.loads((cache / spec.key / "build.json").read_text())
    assert info["version"] == "test" and "-DGGML_RPC=ON" in info["flags"]

    events.clear()
    again = install(progress=events.append, spec=spec, cache=cache, sdist=tmp_path / "gone")
    assert again == first
    assert [e.phase for e in events] == ["cached"]  # no download, no build
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == [spec.key]
    assert find_cached(cache, spec.key) == first


def test_a_failed_build_leaves_no_cache_entry(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    broken = fake_sdist(tmp_path, main="int main(void) { return }\n")
    with pytest.raises(BuildError, match="build failed") as caught:
        install(spec=BuildSpec(version="test"), cache=cache, sdist=broken, jobs=1)
    assert "main.c" in str(caught.value)  # the compiler's complaint is in the message
    assert [p.name for p in cache.iterdir() if not p.name.startswith(".")] == [
        "last-failed-build.log"]
    assert not [p for p in cache.iterdir() if p.is_dir()]  # no entry, no leftover work folder
    assert find_cached(cache) is None


def test_a_failed_configure_leaves_no_cache_entry(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    sdist = fake_sdist(tmp_path, cmake='message(FATAL_ERROR "bogus flags")\n')
    with pytest.raises(BuildError, match="configure failed"):
        install(spec=BuildSpec(version="test", flags=("-DBOGUS=1",)), cache=cache, sdist=sdist)
    assert not [p for p in cache.iterdir() if p.is_dir()]


def test_an_sdist_with_the_wrong_checksum_is_refused(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(BuildError, match="sha256"):
        install(spec=BuildSpec(), cache=cache, sdist=fake_sdist(tmp_path))
    assert not [p for p in cache.iterdir() if p.is_dir()]


def test_the_cache_key_follows_version_and_flags() -> None:
    default = BuildSpec()
    assert default.key.startswith(SDIST_VERSION + "-")
    assert BuildSpec(flags=(*default.flags, "-DGGML_CUDA=ON")).key != default.key
    assert BuildSpec(version="1.0").key != default.key
    assert BuildSpec().key == default.key


def test_cli_which_prints_the_binaries_and_their_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = fake_bin_dir(tmp_path / "bin", "llama-server", "ggml-rpc-server")
    monkeypatch.setenv("SOLLOL_LLAMA_CPP_DIR", str(folder))
    result = CliRunner().invoke(build_cli(), ["llamacpp", "which", "--json"])
    assert result.exit_code == 0, result.output
    # fake programs list no devices; a folder named by the user has no build record: "unknown"
    assert json.loads(result.output) == {"llama_server": str(folder / "llama-server"),
                                         "rpc_server": str(folder / "ggml-rpc-server"),
                                         "source": "SOLLOL_LLAMA_CPP_DIR", "backend": "unknown",
                                         "llama_server_devices": [], "rpc_server_devices": []}
    monkeypatch.setenv("SOLLOL_LLAMA_CPP_DIR", str(tmp_path / "nothing-here"))
    result = CliRunner().invoke(build_cli(), ["llamacpp", "which"])
    assert result.exit_code == 1
    assert INSTALL_COMMAND in result.output and "Traceback" not in result.output


@pytest.mark.llamacpp
def test_the_real_binaries_run(llama_binaries) -> None:
    for binary in (llama_binaries.llama_server, llama_binaries.rpc_server):
        result = subprocess.run([binary, "--version"], capture_output=True, text=True,
                                timeout=60, check=False)
        assert result.returncode == 0, result.stderr
    help_text = subprocess.run([llama_binaries.llama_server, "--help"], capture_output=True,
                               text=True, timeout=60, check=False).stdout
    assert "--rpc" in help_text  # built with GGML_RPC=ON


@pytest.mark.llamacpp
def test_cli_install_returns_the_cached_build_without_rebuilding(llama_binaries) -> None:
    from sollol.llamacpp import cache_root

    entry = find_cached(cache_root(), BuildSpec().key)
    if entry is None:
        pytest.fail(f"no cached build in {cache_root()}: run `{INSTALL_COMMAND}` first")
    result = CliRunner().invoke(build_cli(), ["llamacpp", "install"])
    assert result.exit_code == 0, result.output
    assert f"llama-server:    {entry.llama_server}" in result.output
    assert "] cached: " in result.output
    for phase in ("download", "configure", "build"):
        assert f"] {phase}" not in result.output


def test_install_prefix_puts_both_programs_on_path(tmp_path: Path, monkeypatch) -> None:
    """Issue 28, findings 3 and 9: `--prefix` copies the programs where every account (and a
    systemd unit) can run them, and the lookup then finds them on PATH."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))  # never the real cache
    cache, key = cache_root(), BuildSpec().key
    built = install(spec=BuildSpec(version="test"), cache=cache, sdist=fake_sdist(tmp_path))
    built.llama_server.parent.parent.rename(cache / key)  # as if this version were built
    prefix = tmp_path / "usr-local"
    monkeypatch.setenv("PATH", f"{prefix / 'bin'}:{os.environ['PATH']}")
    result = CliRunner().invoke(build_cli(), ["llamacpp", "install", "--quiet", "--prefix",
                                              str(prefix)])
    assert result.exit_code == 0, result.output
    for name in ("llama-server", "ggml-rpc-server"):
        copy = prefix / "bin" / name
        assert copy.stat().st_mode & 0o777 == 0o755 and not copy.is_symlink()
        assert f"{copy}" in result.stdout
    assert subprocess.run([prefix / "bin" / "ggml-rpc-server", "--version"], capture_output=True,
                          text=True, check=True).stdout == "fake build 1\n"
    assert find_binaries(env=dict(os.environ)).source == "PATH"
