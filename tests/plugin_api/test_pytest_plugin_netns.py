"""The `sollol_network` fixture of SOLLOL's pytest plugin, as a plugin author would use it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sollol.testing.netns import missing_tools, run_isolated

INNER = Path(__file__).with_name("netns_plugin_fixture.py")


def test_the_network_fixture_works_inside_run_isolated(tmp_path: Path) -> None:
    if missing_tools() or os.geteuid() != 0:
        pytest.fail("needs root and iproute2/util-linux (scripts/test installs them)")
    result = run_isolated([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--basetemp", str(tmp_path / "inner"), str(INNER)],
                          cwd=INNER.parents[2])
    assert result.returncode == 0, result.stdout[-6000:]
    assert "1 passed" in result.stdout


def test_the_network_fixture_refuses_the_machines_own_namespace(tmp_path: Path) -> None:
    (tmp_path / "test_outside.py").write_text("def test_x(sollol_network):\n    pass\n")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(tmp_path / "test_outside.py")], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "needs a network namespace of the test's own" in result.stdout
