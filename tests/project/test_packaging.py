"""Issue 28, finding 11: building SOLLOL (what `pip install .` and `scripts/demo` do) prints no
"Package would be ignored" warnings, and the wheel carries every data file the code reads."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _tracked_tree(target: Path) -> Path:
    """The committed and working-tree files git knows, as a fresh clone would have them."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], capture_output=True, check=True).stdout
    archive = target / "tree.tar"
    with tarfile.open(archive, "w") as tar:
        for name in filter(None, listed.decode().split("\0")):
            if (ROOT / name).is_file():
                tar.add(ROOT / name, arcname=name)
    tree = target / "sollol"
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    return tree


def test_the_wheel_builds_without_warnings_and_carries_its_data(tmp_path: Path) -> None:
    tree = _tracked_tree(tmp_path)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v",
         "--wheel-dir", str(tmp_path / "dist"), str(tree)],
        capture_output=True, text=True, timeout=600)
    output = built.stdout + built.stderr
    assert built.returncode == 0, output[-3000:]
    for warning in ("would be ignored", "is absent from the `packages` configuration"):
        assert warning not in output, output[output.find(warning) - 500:][:1500]
    wheel = next((tmp_path / "dist").glob("sollol-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    data = [p.relative_to(ROOT).as_posix() for folder in ("sollol/gateway/static",
                                                          "sollol/scaffold/templates")
            for p in (ROOT / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert data and not [name for name in data if name not in names]
    assert "sollol/plugin_api.json" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
