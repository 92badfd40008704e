"""The plugin manager: entry points, allow/block lists, clear errors, duplicate names."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sollol.core.plugin_manager import collect_named, get_plugin_manager
from sollol.errors import DuplicateNameError, PluginError
from sollol.hookspecs import hookimpl

BUNDLED = {"ollama_pool", "llamacpp_rpc", "policies"}


def sollol_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sollol", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def plugin_rows(env: dict[str, str] | None = None) -> dict[str, dict]:
    result = sollol_cli("plugins", "--json", env=env)
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)}


def test_bundled_plugins_are_listed_with_their_hooks() -> None:
    rows = plugin_rows()
    assert set(rows) >= BUNDLED
    for name in BUNDLED:
        assert rows[name]["status"] == "enabled"
        assert rows[name]["distribution"] == "sollol"
        assert rows[name]["hooks"], f"{name} implements no hook"
        assert all(hook.startswith("sollol_") for hook in rows[name]["hooks"])
        assert len(set(rows[name]["hooks"])) == len(rows[name]["hooks"]), rows[name]["hooks"]


def test_disabled_plugins_env_blocks_a_plugin() -> None:
    rows = plugin_rows({"SOLLOL_DISABLED_PLUGINS": "policies"})
    assert rows["policies"]["status"] == "blocked"
    assert rows["policies"]["hooks"] == []
    assert rows["ollama_pool"]["status"] == "enabled"
    text = sollol_cli("plugins", env={"SOLLOL_DISABLED_PLUGINS": "policies"}).stdout
    assert "policies 0" in text and "(blocked)" in text


def test_allow_list_loads_only_named_plugins() -> None:
    pm = get_plugin_manager(allow=["policies"])
    assert pm.get_plugin("policies") is not None
    assert pm.get_plugin("ollama_pool") is None
    assert pm.plugin_info["ollama_pool"].status == "not allowed"
    rows = plugin_rows({"SOLLOL_PLUGINS": "policies"})
    assert rows["ollama_pool"]["status"] == "not allowed"


def test_allow_list_with_an_unknown_name_is_a_config_error() -> None:
    result = sollol_cli("plugins", env={"SOLLOL_PLUGINS": "policies,olama_pool"})
    assert result.returncode == 2
    assert "'plugins'" in result.stderr and "olama_pool" in result.stderr
    assert "ollama_pool" in result.stderr  # names what is installed


def fake_entry_points(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, source: str) -> None:
    """Make the only `sollol` entry point a module written from `source`."""
    module = tmp_path / "fake_sollol_plugin.py"
    module.write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fake_sollol_plugin", raising=False)
    ep = importlib.metadata.EntryPoint(name="fake", value="fake_sollol_plugin", group="sollol")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [ep])


def test_plugin_that_fails_to_import_names_plugin_and_entry_point(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_entry_points(monkeypatch, tmp_path, "import no_such_module_anywhere\n")
    with pytest.raises(PluginError) as info:
        get_plugin_manager()
    message = str(info.value)
    assert "'fake'" in message and "fake_sollol_plugin" in message
    assert "no_such_module_anywhere" in message


def test_misspelled_hook_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_entry_points(monkeypatch, tmp_path, """
        from sollol.hookspecs import hookimpl

        @hookimpl
        def sollol_regster_policies(register):
            pass
    """)
    with pytest.raises(PluginError) as info:
        get_plugin_manager()
    assert "'fake'" in str(info.value)
    assert "sollol_regster_policies" in str(info.value)


def test_wrong_hook_arguments_are_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_entry_points(monkeypatch, tmp_path, """
        from sollol.hookspecs import hookimpl

        @hookimpl
        def sollol_register_policies(register, colour):
            pass
    """)
    with pytest.raises(PluginError, match=r"'fake'.*fake_sollol_plugin"):
        get_plugin_manager()


def test_two_entry_points_with_one_plugin_name_are_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for module in ("fake_plugin_one", "fake_plugin_two"):
        (tmp_path / f"{module}.py").write_text('"""A plugin implementing no hook."""\n')
        monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    same_name = [importlib.metadata.EntryPoint(name="fake", value=module, group="sollol")
                 for module in ("fake_plugin_one", "fake_plugin_two")]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: same_name)
    with pytest.raises(PluginError, match=r"'fake'.*fake_plugin_one.*fake_plugin_two"):
        get_plugin_manager()
    same_object = [importlib.metadata.EntryPoint(name=name, value="fake_plugin_one",
                                                 group="sollol") for name in ("one", "two")]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: same_object)
    with pytest.raises(PluginError, match=r"'two'.*fake_plugin_one.*'one'"):
        get_plugin_manager()


def test_duplicate_policy_names_fail_naming_both_plugins() -> None:
    class First:
        @hookimpl
        def sollol_register_policies(self, register):
            register("same", lambda settings: None)

    class Second:
        @hookimpl
        def sollol_register_policies(self, register):
            register("same", lambda settings: None)

    pm = get_plugin_manager(load_entry_points=False)
    pm.register(First(), name="first")
    pm.register(Second(), name="second")
    with pytest.raises(DuplicateNameError) as info:
        collect_named(pm, "sollol_register_policies", "routing policy")
    assert "first" in str(info.value) and "second" in str(info.value)
    assert "'same'" in str(info.value)


def test_duplicate_backend_kind_fails_naming_both_plugins(pm) -> None:
    from sollol.models import BackendKind

    existing = collect_named(pm, "sollol_register_backend_kinds", "backend kind")
    assert existing, "bundled plugins register backend kinds"
    name, (_kind, owner) = next(iter(existing.items()))

    class Clash:
        @hookimpl
        def sollol_register_backend_kinds(self, register):
            register(BackendKind(name=name, api="openai"))

    pm.register(Clash(), name="clash")
    try:
        with pytest.raises(DuplicateNameError, match=f"{owner}.*clash|clash.*{owner}"):
            collect_named(pm, "sollol_register_backend_kinds", "backend kind")
    finally:
        pm.unregister(name="clash")


THIRD_PARTY_PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "sollol-thirdparty-demo"
version = "1.2.3"

[project.entry-points.sollol]
thirdparty = "sollol_thirdparty_demo"
"""

THIRD_PARTY_MODULE = '''
"""A throwaway third-party SOLLOL plugin, built and installed by a test."""
import click
from sollol.hookspecs import hookimpl


@hookimpl
def sollol_register_commands(cli):
    @cli.command(name="thirdparty-hello")
    def hello():
        """Say hello from a third-party plugin."""
        click.echo("hello from a third-party plugin")
'''


@pytest.fixture
def third_party_plugin(tmp_path: Path):
    """Build and pip-install a plugin package with its own pyproject; uninstall it afterwards."""
    root = tmp_path / "thirdparty"
    (root / "sollol_thirdparty_demo").mkdir(parents=True)
    (root / "pyproject.toml").write_text(THIRD_PARTY_PYPROJECT)
    (root / "sollol_thirdparty_demo" / "__init__.py").write_text(THIRD_PARTY_MODULE)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", str(root)], check=True,
                   timeout=300)
    try:
        yield "thirdparty"
    finally:
        subprocess.run([*pip, "uninstall", "-y", "sollol-thirdparty-demo"], check=True,
                       timeout=300)


def test_third_party_plugin_is_listed_and_its_hook_called(third_party_plugin: str) -> None:
    rows = plugin_rows()
    row = rows[third_party_plugin]
    assert row["version"] == "1.2.3"
    assert row["distribution"] == "sollol-thirdparty-demo"
    assert row["hooks"] == ["sollol_register_commands"]
    result = sollol_cli("thirdparty-hello")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hello from a third-party plugin"
    blocked = sollol_cli("thirdparty-hello", env={"SOLLOL_DISABLED_PLUGINS": third_party_plugin})
    assert blocked.returncode != 0
