"""The shape of the tree, checked: import cycles only where docs/architecture.md keeps them (with
the reason), small product modules, no old module paths, and product code importing only what a
plain `pip install sollol` brings (the test extra serves sollol.testing alone).

The import graph is read from the source (ast), not from `sys.modules`: every import counts,
at module level, inside a function, and under `if TYPE_CHECKING:` (a type named across two
modules ties them as much as a call does). Relative imports are resolved, and `plugins.X` is the
installed `sollol_plugins.X`.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Iterator, Mapping, Set
from pathlib import Path

from sollol._moved import MOVED

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"sollol": ROOT / "sollol", "sollol_plugins": ROOT / "plugins"}
"""The product: top-level package -> its folder (`plugins/` installs as `sollol_plugins`)."""
SCANNED = ("sollol", "plugins", "tests", "bench", "examples", "scripts")
"""Folders whose Python must not import an old module path."""
SKIPPED_PARTS = {"__pycache__", ".venv", "build", "node_modules"}
ARCHITECTURE = ROOT / "docs" / "architecture.md"
KEPT_HEADING = "## Import cycles we keep"
KEPT_LINE = re.compile(r"^- `(?P<importer>[\w.]+)` -> `(?P<imported>[\w.]+)`: (?P<reason>\S.*)$")
LOWER = ("core", "forwarding", "dialects")
UPPER = ("gateway", "client", "cli")
"""Folders of sollol/: the lower layers never import the upper ones."""
MAX_LINES = 400
"""A product module at this length is a sign to split it by job (STYLE.md)."""
PYPROJECT = ROOT / "pyproject.toml"
EXTRAS = {"sollol.ray": "ray", "sollol_plugins.ray_cluster": "ray"}
"""Product modules (and packages, with what is below them) that may import an optional extra's
packages (lazily, failing with a message that names the extra): name -> the extra in
pyproject.toml that brings them."""

Graph = Mapping[str, Set[str]]


def python_files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*.py")):
        if not SKIPPED_PARTS & set(path.relative_to(ROOT).parts):
            yield path


def product_modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of sollol/ and plugins/ (packages by `__init__`)."""
    modules = {}
    for top, folder in PACKAGES.items():
        for path in python_files(folder):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((top, *parts))] = path
    return modules


def installed_name(name: str) -> str:
    """`plugins.ollama_pool.x` is the module Python knows as `sollol_plugins.ollama_pool.x`."""
    return "sollol_plugins" + name.removeprefix("plugins") if name.split(".")[0] == "plugins" \
        else name


def imported(path: Path, module: str | None = None) -> Iterator[tuple[str, str | None]]:
    """(module, name) for every import in the file: `import a.b` gives ("a.b", None),
    `from a import b` gives ("a", "b"); relative imports are resolved against `module` (the
    file's dotted name). `importlib.import_module("a.b")` counts as `import a.b`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = (module or "") if path.name == "__init__.py" else (module or "").rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield installed_name(alias.name), None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield installed_name(base), alias.name
        elif (isinstance(node, ast.Call) and _called(node.func) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            yield installed_name(node.args[0].value), None


def _called(func: ast.expr) -> str | None:
    """`f` of a call `f(...)` or `x.f(...)`."""
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else None


def import_graph(modules: Mapping[str, Path]) -> dict[str, set[str]]:
    """Module -> the product modules it imports (`from pkg import sub` imports pkg.sub)."""

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for base, name in imported(path, module):
            full = f"{base}.{name}" if name else base
            targets.add(full if full in modules else known(base))
        graph[module] = targets - {None, module}
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def reaches(graph: Graph, start: str, goal: str) -> bool:
    seen, todo = {start}, [start]
    while todo:
        for child in graph.get(todo.pop(), ()):
            if child == goal:
                return True
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return False


def kept_cycles(text: str) -> dict[tuple[str, str], str]:
    """(importer, imported) -> reason, from the "Import cycles we keep" section of the doc."""
    lines = text.splitlines()
    assert KEPT_HEADING in lines, f"docs/architecture.md has no {KEPT_HEADING!r} section"
    section = lines[lines.index(KEPT_HEADING) + 1:]
    kept = {}
    for line in section:
        if line.startswith("#"):
            break
        if line.startswith("- "):
            match = KEPT_LINE.match(line)
            assert match, f"not `- `importer` -> `imported`: reason`: {line!r}"
            kept[match["importer"], match["imported"]] = match["reason"]
    return kept


def describe(graph: Graph, component: list[str]) -> str:
    edges = [f"{a} -> {b}" for a in component for b in sorted(graph[a]) if b in component]
    return "\n  ".join(edges)


def test_no_import_cycles_but_the_kept_ones() -> None:
    graph = import_graph(product_modules())
    kept = kept_cycles(ARCHITECTURE.read_text())
    for importer, target in kept:
        assert target in graph.get(importer, ()), \
            f"docs/architecture.md keeps {importer} -> {target}, but there is no such import"
        assert reaches(graph, target, importer), \
            f"{importer} -> {target} closes no cycle any more: drop it from docs/architecture.md"
    rest = {module: targets - {b for a, b in kept if a == module}
            for module, targets in graph.items()}
    found = cycles(rest)
    assert not found, "import cycles (break them, or keep one in docs/architecture.md with the " \
        "reason):\n  " + "\n\n  ".join(describe(rest, c) for c in found)


def test_the_layers_below_the_gateway_the_library_and_the_cli_never_reach_them() -> None:
    """Core, forwarding and dialects serve the gateway and the library alike: not even through
    another module may they import either, or the CLI."""
    graph = import_graph(product_modules())
    above = [m for m in graph if m.split(".")[:2] in (["sollol", t] for t in UPPER)]
    below = [m for m in graph if m.split(".")[:2] in (["sollol", t] for t in LOWER)]
    assert above and below
    found = {f"{low} -> {high}" for low in below for high in above if reaches(graph, low, high)}
    assert not found, sorted(found)


def test_the_cycle_finder_sees_function_level_type_checking_and_relative_imports(
        tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from . import b\n")
    (package / "b.py").write_text("from typing import TYPE_CHECKING\n"
                                  "if TYPE_CHECKING:\n    from pkg.c import C\n")
    (package / "c.py").write_text("from .a import f\nimport plugins.x\n"
                                  "from importlib import import_module\n"
                                  "def g():\n    return import_module('pkg')\n")
    modules = {f"pkg.{n}": package / f"{n}.py" for n in "abc"} | {"pkg": package / "__init__.py"}
    graph = import_graph(modules)
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.c"}
    assert graph["pkg.c"] == {"pkg.a", "pkg"}  # plugins.x is sollol_plugins.x: not here
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
    assert cycles({**graph, "pkg.c": set()}) == []
    assert kept_cycles("## Import cycles we keep\n\n- `pkg.b` -> `pkg.c`: only a type\n"
                       "\n## Next\n- not a kept cycle\n") == {("pkg.b", "pkg.c"): "only a type"}


def test_product_modules_are_small() -> None:
    long = {f"{path.relative_to(ROOT)}: {n} lines"
            for path in product_modules().values()
            if (n := len(path.read_text().splitlines())) >= MAX_LINES}
    assert not long, f"modules of {MAX_LINES} lines or more (split them by job): {sorted(long)}"


def old_path(base: str, name: str | None, real: Set[str]) -> str | None:
    """The old module path (a key of sollol._moved.MOVED) this import goes through, if any."""
    for candidate in (f"{base}.{name}" if name else None, base):
        if candidate is None:
            continue
        parts = candidate.split(".")
        for end in range(len(parts), 0, -1):
            prefix = ".".join(parts[:end])
            if prefix in MOVED and prefix not in real:
                return prefix
    # a package that now lives at an old module's path (`sollol.client`) answers only its
    # submodules; a name taken from it is the old module's name
    if name and base in MOVED and f"{base}.{name}" not in real:
        return base
    return None


def test_nothing_imports_an_old_module_path() -> None:
    modules = product_modules()
    real, names = set(modules), {path: module for module, path in modules.items()}
    found = set()
    for folder in SCANNED:
        for path in python_files(ROOT / folder):
            for base, name in imported(path, names.get(path)):
                if (old := old_path(base, name, real)) is not None:
                    found.add(f"{path.relative_to(ROOT)}: {old} (now {MOVED[old]})")
    assert not found, sorted(found)


def test_the_old_path_check_knows_moved_modules_and_packages() -> None:
    real = {"sollol.core.runtime", "sollol.client", "sollol.client.facade", "sollol"}
    assert old_path("sollol.cluster", None, real) == "sollol.cluster"
    assert old_path("sollol", "cluster", real) == "sollol.cluster"
    assert old_path("sollol.cluster", "ClusterRuntime", real) == "sollol.cluster"
    assert old_path("sollol.client", "Cluster", real) == "sollol.client"
    assert old_path("sollol.client", "facade", real) is None
    assert old_path("sollol.core.runtime", "ClusterRuntime", real) is None


def test_moved_paths_point_at_real_modules() -> None:
    real = set(product_modules())
    assert not {new for new in MOVED.values() if new not in real}


def distributions(requirements: list[str]) -> set[str]:
    """Normalised distribution names of PEP 508 requirement strings, with what their extras
    bring (`uvicorn[standard]` declares uvloop too)."""
    names = set()
    for requirement in requirements:
        match = re.match(r"([\w.-]+)(?:\[([\w,\s-]+)\])?", requirement)
        name, extras = match.group(1), match.group(2)
        names.add(name.lower().replace("_", "-"))
        for extra in (extras or "").split(","):
            if extra.strip():
                names |= distributions([r.split(";")[0] for r in
                                        importlib.metadata.requires(name) or ()
                                        if re.search(rf"extra == [\"']{extra.strip()}[\"']", r)])
    return names


def third_party(path: Path, module: str) -> set[str]:
    """Top-level names of what the file imports from outside the standard library and SOLLOL."""
    return {base.split(".")[0] for base, _ in imported(path, module) if base
            and base.split(".")[0] not in sys.stdlib_module_names | {"sollol", "sollol_plugins"}}


def test_product_code_imports_only_declared_dependencies() -> None:
    """A plain install runs every product module: what one imports is a runtime dependency in
    pyproject.toml (sollol.testing, for tests and plugin authors, may also use the test extra)."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    runtime = distributions(project["dependencies"])
    testing = runtime | distributions(project["optional-dependencies"]["test"])
    extras = {name: runtime | distributions(project["optional-dependencies"][extra])
              for name, extra in EXTRAS.items()}
    providers = importlib.metadata.packages_distributions()
    missing = set()
    for module, path in product_modules().items():
        allowed = testing if module.startswith("sollol.testing.") else runtime
        allowed = next((a for name, a in extras.items()
                        if module == name or module.startswith(name + ".")), allowed)
        for name in third_party(path, module):
            dists = {d.lower().replace("_", "-") for d in providers.get(name, [name])}
            if not dists & allowed:
                missing.add(f"{module}: {name} ({', '.join(sorted(dists))})")
    assert not missing, f"imports of undeclared dependencies: {sorted(missing)}"


def test_the_dependency_check_would_catch_one(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import json\nimport requests\nfrom yaml import safe_load\n"
                      "from sollol.core import units\nfrom . import sibling\n")
    assert third_party(sample, "sollol.core.sample") == {"requests", "yaml"}
