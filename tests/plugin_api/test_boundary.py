"""The bundled plugins, the example plugins and scaffolded plugins use only the public plugin API.

"Anything they do, yours can do too" holds only if they import nothing from `sollol` beyond
`sollol.plugin_api.PUBLIC`: a `from M import N` needs M in PUBLIC and N in PUBLIC[M]; a module
imported whole (`import sollol.x as x`, `from sollol.core import units`) may be used only for its
public names. Plugin tests may also use `sollol.testing` (docs/testing-plugins.md) and
`sollol.Cluster`.
"""

from __future__ import annotations

import ast
from collections.abc import Collection, Mapping
from pathlib import Path

import pytest

from sollol import hookspecs, plugin_api, scaffold

ROOT = Path(__file__).resolve().parents[2]
ANY = None
"""In an allowance: every name of the module may be used."""
TEST_EXTRAS: Mapping[str, Collection[str] | None] = {"sollol": ("Cluster",),
                                                     "sollol.testing": ANY}


def allowed(*, test_file: bool) -> dict[str, Collection[str] | None]:
    """Module -> the names a file may use from it (ANY: all of them)."""
    names: dict[str, Collection[str] | None] = {m: set(n) for m, n in plugin_api.PUBLIC.items()}
    names["sollol.hookspecs"] = {*plugin_api.PUBLIC["sollol.hookspecs"],
                                 *(n for n in vars(hookspecs) if n.startswith("sollol_"))}
    if test_file:
        names.update(TEST_EXTRAS)
    return names


def _ours(module: str) -> bool:
    return module == "sollol" or module.startswith("sollol.")


def _importable(module: str, rules: Mapping[str, Collection[str] | None]) -> bool:
    """`module` is allowed itself, or lies in a module allowed whole (sollol.testing.x)."""
    parts = module.split(".")
    return module in rules or any(rules.get(".".join(parts[:end]), ()) is ANY
                                  for end in range(1, len(parts)))


def _split(dotted: str, rules: Mapping[str, Collection[str] | None]) -> tuple[str, str] | None:
    """(the longest allowed module `dotted` starts with, the first name after it)."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        module = ".".join(parts[:end])
        if module in rules:
            return module, (parts[end] if end < len(parts) else "")
    return None


def _dotted(node: ast.AST) -> str | None:
    """`a.b.c` for an attribute chain rooted at a plain name, else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def _parse(path: Path) -> ast.AST:
    """The file's tree, each node knowing its parent (only whole chains `a.b.c` are checked)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            child.parent = node  # type: ignore[attr-defined]
    return tree


def violations(path: Path, *, test_file: bool) -> list[str]:
    """Every use of a non-public `sollol` module or name in one file, as readable lines."""
    rules = allowed(test_file=test_file)
    tree = _parse(path)
    found: list[str] = []
    bound: dict[str, str] = {}  # local name -> the sollol module it stands for

    def complain(node: ast.AST, what: str) -> None:
        found.append(f"{path.name}:{getattr(node, 'lineno', '?')}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not _ours(alias.name):
                    continue
                if not _importable(alias.name, rules):
                    complain(node, f"import {alias.name}: not a public module")
                elif alias.asname:
                    bound[alias.asname] = alias.name
                else:  # `import sollol.x.y` binds `sollol`
                    bound["sollol"] = "sollol"
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and _ours(node.module):
            for alias in node.names:
                whole = f"{node.module}.{alias.name}"
                if whole in rules:  # a public module imported whole: `from sollol.core import x`
                    bound[alias.asname or alias.name] = whole
                elif not _importable(node.module, rules):
                    complain(node, f"from {node.module} import {alias.name}: not a public module")
                elif (names := rules.get(node.module, ANY)) is not ANY and alias.name not in names:
                    complain(node, f"{whole} is not public")
        elif (isinstance(node, ast.Call) and str(_dotted(node.func)).endswith("import_module")
              and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str) and _ours(node.args[0].value)
              and not _importable(node.args[0].value, rules)):
            complain(node, f"import_module({node.args[0].value!r}): not a public module")
        elif isinstance(node, ast.Attribute) and not isinstance(getattr(node, "parent", None),
                                                                ast.Attribute):
            dotted = _dotted(node)
            head, _, rest = (dotted or "").partition(".")
            if head in bound:
                full = f"{bound[head]}.{rest}"
                where = _split(full, rules)
                names = rules[where[0]] if where else ()
                if where is None or (where[1] and names is not ANY and where[1] not in names):
                    shown = f"{where[0]}.{where[1]}" if where else full
                    complain(node, f"{shown} is not public")
    return found


def scan(files: Collection[Path], root: Path) -> list[str]:
    out: list[str] = []
    for path in sorted(files):
        relative = path.relative_to(root)
        test_file = "tests" in relative.parts or path.name.startswith(("test_", "conftest"))
        out += [f"{relative.parent}/{line}" for line in violations(path, test_file=test_file)]
    return out


def test_the_bundled_plugins_import_only_the_public_api() -> None:
    files = sorted((ROOT / "plugins").rglob("*.py"))
    assert len(files) > 30
    offenders = scan(files, ROOT)
    assert not offenders, "\n".join(offenders)


def test_the_example_plugins_import_only_the_public_api() -> None:
    files = [p for folder in sorted((ROOT / "examples").iterdir()) if folder.is_dir()
             for p in folder.rglob("*.py")]
    assert len({p.parts[len(ROOT.parts) + 1] for p in files}) >= 2  # both example plugins
    offenders = scan(files, ROOT)
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("kind", scaffold.KINDS)
def test_a_scaffolded_plugin_imports_only_the_public_api(kind: str, tmp_path: Path) -> None:
    root = scaffold.write(f"guard-{kind}", kind, tmp_path)
    files = sorted(root.rglob("*.py"))
    assert any("tests" in p.parts for p in files) and len(files) >= 2
    offenders = scan(files, tmp_path)
    assert not offenders, "\n".join(offenders)


def test_the_scan_catches_every_way_past_the_boundary(tmp_path: Path) -> None:
    plugin = tmp_path / "plugin.py"
    plugin.write_text(
        "import importlib\n"
        "import sollol.gateway\n"                                   # a private module
        "import sollol.core.units as units\n"                       # public module, bound
        "from sollol.core import names\n"                           # public module, bound
        "from sollol.core.router import choose_route\n"             # private module
        "from sollol.routes import POOL, choose\n"                  # one public, one not
        "from sollol.testing.static_route import StaticRoute\n"     # tests only
        "from sollol import Cluster\n"                              # tests only
        "from sollol.hookspecs import hookimpl, sollol_startup\n"   # public
        "units.parse_bytes('1 GiB'); units.BYTE_UNITS\n"
        "names.canonical('m'); names.MAX_MODEL_NAME\n"
        "importlib.import_module('sollol.cli.run')\n"
        "importlib.import_module('sollol.routes')\n"
    )
    found = "\n".join(violations(plugin, test_file=False))
    for bad in ("import sollol.gateway", "sollol.core.units.BYTE_UNITS",
                "sollol.core.names.MAX_MODEL_NAME", "from sollol.core.router import choose_route",
                "sollol.routes.choose", "from sollol.testing.static_route import StaticRoute",
                "from sollol import Cluster", "import_module('sollol.cli.run')"):
        assert bad in found, f"missed {bad!r} in:\n{found}"
    for good in ("POOL", "parse_bytes", "canonical'", "hookimpl", "sollol_startup",
                 "'sollol.routes'"):
        assert good not in found, found
    assert len(found.splitlines()) == 8, found

    test = tmp_path / "test_plugin.py"
    test.write_text("import sollol\nfrom sollol.testing.static_route import StaticRoute\n"
                    "from sollol.testing import tiny_models\nsollol.Cluster\n"
                    "sollol.gateway.GatewayThread\n")
    assert [line.split(": ", 1)[1] for line in violations(test, test_file=True)] == [
        "sollol.gateway is not public"]
