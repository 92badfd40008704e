"""Guard tests that keep the docs and the code in step."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from sollol import hookspecs
from sollol.core.plugin_manager import collect_named, get_plugin_manager

ROOT = Path(__file__).resolve().parents[2]
HOOKS = sorted(name for name in dir(hookspecs) if name.startswith("sollol_"))


def hook_signature(name: str) -> str:
    """The hook's signature as the docs write it: `name(arg: Type, ...) -> Return`."""
    sig = inspect.signature(getattr(hookspecs, name))
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"{name}({params}) -> {sig.return_annotation}"


def test_there_are_hooks() -> None:
    assert len(HOOKS) >= 9


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_is_documented_with_its_exact_signature(name: str) -> None:
    docs = (ROOT / "docs" / "plugins.md").read_text()
    assert hook_signature(name) in docs, f"docs/plugins.md lacks `{hook_signature(name)}`"


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_is_exercised_by_a_test(name: str) -> None:
    this = Path(__file__).resolve()
    users = [p for p in (ROOT / "tests").rglob("*.py")
             if p.resolve() != this and re.search(rf"\b{name}\b", p.read_text())]
    assert users, f"no test implements or calls {name}"


def test_every_config_key_is_documented() -> None:
    docs = (ROOT / "docs" / "configuration.md").read_text()
    settings = collect_named(get_plugin_manager(), "sollol_register_settings", "config key")
    missing = [name for name in settings if f"`{name}`" not in docs]
    assert not missing, f"docs/configuration.md lacks {missing}"


def test_readme_names_the_test_command_that_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/test" in readme
    assert "scripts/test" in ci


def _leaf_commands():
    import click

    from sollol.cli import build_cli

    def walk(group: click.Group, prefix: str):
        for name, command in sorted(group.commands.items()):
            if isinstance(command, click.Group):
                if command.invoke_without_command:  # a group that is a command itself
                    yield f"{prefix} {name}", command
                yield from walk(command, f"{prefix} {name}")
            else:
                yield f"{prefix} {name}", command

    return list(walk(build_cli(), "sollol"))


def test_every_command_and_option_is_in_the_cli_docs() -> None:
    import click

    docs = (ROOT / "docs" / "cli.md").read_text()
    commands = _leaf_commands()
    assert len(commands) >= 15
    for name, command in commands:
        assert f"`{name}`" in docs, f"docs/cli.md lacks {name}"
        for option in command.params:
            if isinstance(option, click.Option):
                assert f"`{', '.join(option.opts)}`" in docs, f"{name}: {option.opts} undocumented"


def _api_doc_routes() -> set[tuple[str, str]]:
    """(methods, path) of every row of docs/api.md's endpoint table."""
    rows = set()
    for line in (ROOT / "docs" / "api.md").read_text().splitlines():
        match = re.match(r"^\| `([A-Z, ]+)` \| `(/[^`]*)` \|", line)
        if match:
            rows.add((match.group(1), match.group(2)))
    return rows


def test_docs_api_lists_exactly_the_gateways_routes() -> None:
    from sollol.gateway.route_table import ROUTES

    documented = _api_doc_routes()
    served = set()
    for route in ROUTES:
        path = route.path
        if route.prefix:  # documented with its parameter: /api/blobs/:digest
            path = next((p for _, p in documented
                         if p.startswith(path) and p[len(path):].startswith(":")), path + ":")
        served.add((", ".join(route.methods), path))
    assert documented == served, (
        f"docs/api.md lacks {sorted(served - documented)}; "
        f"documents routes the gateway does not serve: {sorted(documented - served)}")


def test_every_test_named_in_the_threat_table_exists() -> None:
    """docs/security.md names the test covering each threat: `tests/f.py::name`, or `::name`
    for another test in the file named before it on that row."""
    text = (ROOT / "docs" / "security.md").read_text()
    table = text[text.index("## Threats and the tests"):]
    named, missing = 0, []
    for row in (line for line in table.splitlines() if line.startswith("|")):
        current = None
        for path, name in re.findall(r"`(tests/[\w/]+\.py)?(?:::(\w+))?`", row):
            current = path or current
            if path and not (ROOT / path).exists():
                missing.append(path)
            elif name and current:
                named += 1
                if not re.search(rf"def {name}\b", (ROOT / current).read_text()):
                    missing.append(f"{current}::{name}")
    assert named >= 20 and not missing, f"docs/security.md names missing tests: {missing}"


def test_plugins_md_lists_exactly_the_public_names() -> None:
    """docs/plugins.md's table of public names is `sollol.plugin_api.PUBLIC`, row for row."""
    from sollol.plugin_api import PUBLIC

    text = (ROOT / "docs" / "plugins.md").read_text()
    table = text[text.index("### Public names"):]
    rows = set(re.findall(r"^\| `(sollol[\w.]*)` \| `(\w+)` \| \S", table, re.MULTILINE))
    public = {(module, name) for module, names in PUBLIC.items() for name in names}
    assert len(public) > 50
    assert rows == public, (f"docs/plugins.md lacks {sorted(public - rows)}; lists names that "
                            f"are not public: {sorted(rows - public)}")


def test_readmes_sharding_set_up_names_the_placement_keys() -> None:
    """An operator reading only the README learns where sharded models go and how to cap a
    CPU rpc-server's memory (issue 28: neither was named)."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Use it with your real cluster")
    section = readme[start:readme.index("\n## ", start + 1)]
    assert "`rpc_placement`" in section and "`rpc_backend_memory`" in section
