"""The core never imports a plugin: plugins reach the core only through entry points."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "sollol"
FORBIDDEN = ("sollol_plugins", "plugins")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)):
            names.add(str(node.args[0].value))
    return names


def test_core_imports_no_plugin() -> None:
    files = sorted(CORE.rglob("*.py"))
    assert len(files) > 5
    offenders = {
        f"{path.relative_to(CORE.parent)}: {name}"
        for path in files
        for name in imported_modules(path)
        if name.split(".")[0] in FORBIDDEN
    }
    assert not offenders, offenders


def test_the_scan_would_catch_an_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("from sollol_plugins.policies import x\nimport plugins.ollama_pool\n")
    assert {"sollol_plugins.policies", "plugins.ollama_pool"} <= imported_modules(sample)


def test_the_request_path_below_the_gateway_never_imports_it() -> None:
    """Dispatcher, dialects and upstream client serve the library too: no HTTP server."""
    below = [*sorted((CORE / "forwarding").glob("*.py")), *sorted((CORE / "dialects").glob("*.py"))]
    offenders = {
        f"{path.relative_to(CORE.parent)}: {name}"
        for path in below
        for name in imported_modules(path)
        if name == "sollol.gateway" or name.startswith(("sollol.gateway.", "sollol.cli"))
    }
    assert not offenders, offenders


def test_core_commands_live_in_the_cli_package() -> None:
    strays = sorted(path.name for path in CORE.glob("cli_*.py"))
    assert not strays, f"CLI modules outside sollol/cli/: {strays}"
