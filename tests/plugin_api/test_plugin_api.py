"""The public plugin API changes only with a version bump that matches the change."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from sollol import plugin_api


def test_the_code_matches_the_record_of_its_version() -> None:
    records = plugin_api.read_record()
    assert plugin_api.VERSION in records, (
        f"plugin API {plugin_api.VERSION} is not recorded: run `python -m sollol.plugin_api "
        "--write` after bumping VERSION")
    breaking, added = plugin_api.compare(records[plugin_api.VERSION], plugin_api.describe())
    needed = plugin_api.required_bump(plugin_api.VERSION, breaking, added)
    assert not (breaking or added), (
        f"the public plugin API changed without a version bump: bump sollol.plugin_api.VERSION "
        f"to {needed} or later, then run `python -m sollol.plugin_api --write`:\n  "
        + "\n  ".join(breaking + added))


def test_each_bump_is_at_least_what_its_changes_need() -> None:
    records = plugin_api.read_record()
    versions = sorted(records, key=plugin_api.version_key)
    for previous, later in itertools.pairwise(versions):
        breaking, added = plugin_api.compare(records[previous], records[later])
        needed = plugin_api.required_bump(previous, breaking, added)
        if needed is not None:
            assert plugin_api.version_key(later) >= plugin_api.version_key(needed), (
                f"{previous} -> {later} needs at least {needed}: " + "; ".join(breaking + added))


def test_every_hook_spec_is_public() -> None:
    from sollol import hookspecs

    hooks = {f"sollol.hookspecs.{n}" for n in vars(hookspecs) if n.startswith("sollol_")}
    assert hooks <= set(plugin_api.describe())


def test_changes_are_classified(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new optional field is an addition; a removed field, a new required field, a changed
    hook signature or a removed hook is breaking."""
    before = {"m.A": {"fields": {"x": {"type": "int", "default": False}}, "methods": {}},
              "h.hook": {"signature": "(a: 'int') -> 'None'"}}
    optional = {"m.A": {"fields": {"x": {"type": "int", "default": False},
                                   "y": {"type": "str", "default": True}}, "methods": {}},
                "h.hook": before["h.hook"], "h.new_hook": {"signature": "() -> 'None'"}}
    assert plugin_api.compare(before, optional) == ([], ["added: h.new_hook", "added: m.A"])
    assert plugin_api.required_bump("1.3", [], ["added: m.A"]) == "1.4"

    required = {"m.A": {"fields": {"x": {"type": "int", "default": False},
                                   "y": {"type": "str", "default": False}}, "methods": {}},
                "h.hook": before["h.hook"]}
    assert plugin_api.compare(before, required)[0] == ["changed: m.A"]
    changed_hook = {"m.A": before["m.A"], "h.hook": {"signature": "(a: 'str') -> 'None'"}}
    assert plugin_api.compare(before, changed_hook)[0] == ["changed: h.hook"]

    spec = {"params": {"a": "int"}, "returns": "None", "spec": {}}
    opt_in = {"params": {"a": "int", "cluster": "Cluster"}, "returns": "None", "spec": {}}
    assert plugin_api.compare({"h.s": spec}, {"h.s": opt_in}) == ([], ["added: h.s"])
    retyped = {"params": {"a": "str"}, "returns": "None", "spec": {}}
    assert plugin_api.compare({"h.s": spec}, {"h.s": retyped})[0] == ["changed: h.s"]
    first = {**spec, "spec": {"firstresult": True}}
    assert plugin_api.compare({"h.s": spec}, {"h.s": first})[0] == ["changed: h.s"]
    assert plugin_api.compare(before, {"m.A": before["m.A"]})[0] == ["removed: h.hook"]
    assert plugin_api.required_bump("1.3", ["removed: h.hook"], []) == "2.0"


def test_writing_refuses_to_rewrite_a_recorded_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    record = tmp_path / "api.json"
    stale = {plugin_api.VERSION: {"sollol.hookspecs.sollol_gone": {"signature": "() -> 'None'"}}}
    record.write_text(json.dumps(stale))
    with pytest.raises(SystemExit, match="bump it to"):
        plugin_api.write(record)
    assert json.loads(record.read_text()) == stale  # untouched

    recorded = plugin_api.VERSION
    monkeypatch.setattr(plugin_api, "VERSION", "9.0")
    assert "recorded plugin API 9.0" in plugin_api.write(record)
    written = json.loads(record.read_text())
    assert list(written) == [recorded, "9.0"]
    assert written["9.0"] == plugin_api.describe()


def test_the_record_is_installed_with_the_package() -> None:
    """A wheel must carry plugin_api.json (package data), or installed users cannot check."""
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml")
                              .read_text())
    assert "plugin_api.json" in pyproject["tool"]["setuptools"]["package-data"]["sollol"]
