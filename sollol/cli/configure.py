"""`sollol config path|show|get|set|unset`: dotted keys reach into tables, and every change is
validated (the whole file, and each policy's settings) before it is written."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import click

from sollol.cli.common import UsageFailure, config_option, load_for_cli
from sollol.cli.config_file import ConfigDocument
from sollol.config import Setting, check_value, config_path, parse_text
from sollol.core.names import closest
from sollol.errors import ConfigError, PluginError

_MISSING = object()


@click.group()
def config() -> None:
    """Show, change and locate the configuration."""


@config.command("path")
def config_path_command() -> None:
    """Print the config file's path."""
    click.echo(str(config_path()))


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@config_option
def config_show(as_json: bool, config_file: Path | None) -> None:
    """Print every key with its value and where the value came from."""
    cfg, pm = load_for_cli(config_file)
    settings = _settings(pm)
    values = {k: settings[k].shown(v) if k in settings else v for k, v in cfg.values.items()}
    if as_json:
        click.echo(json.dumps({"path": str(cfg.path), "values": values,
                               "sources": dict(cfg.sources)}, indent=2, default=str))
        return
    click.echo(f"# {cfg.path}")
    for key in sorted(values):
        click.echo(f"{key} = {json.dumps(values[key], default=str)}  # {cfg.sources[key]}")


@config.command("get")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Print the value as JSON only.")
@config_option
def config_get(key: str, as_json: bool, config_file: Path | None) -> None:
    """Print KEY's value (dotted for nested settings: policy_settings.pinned.fallback).

    Exit code 1 when a nested key is not set.
    """
    cfg, pm = load_for_cli(config_file)
    settings = _settings(pm)
    parts = _split(key, settings)
    value = _dig(settings[parts[0]].shown(cfg.values[parts[0]]), parts[1:])
    if value is _MISSING:
        click.echo(f"{key} is not set", err=True)
        raise SystemExit(1)
    if as_json:
        click.echo(json.dumps(value, default=str))
        return
    click.echo(f"{key} = {json.dumps(value, default=str)}  # {cfg.sources[parts[0]]}")


@config.command("set")
@click.argument("key")
@click.argument("value")
@config_option
def config_set(key: str, value: str, config_file: Path | None) -> None:
    """Set KEY to VALUE in the config file (lists: comma-separated; tables: JSON; dotted keys
    set one entry of a table, its VALUE read as JSON when it parses, else as text)."""
    _cfg, pm = load_for_cli(config_file)
    settings = _settings(pm)
    parts = _split(key, settings)
    setting = settings[parts[0]]
    path = config_file or config_path()
    document = _read(path)
    if len(parts) == 1:
        try:
            typed = check_value(setting, parse_text(setting, value), "command line")
        except ValueError:
            raise UsageFailure(str(ConfigError(key, value, setting.expected()))) from None
        except ConfigError as exc:
            raise UsageFailure(str(exc)) from None
        if typed is None:
            document.remove(parts)
        else:
            document.set(parts, typed)
    else:
        typed = _json_or_text(value)
        try:
            document.set(parts, typed)
        except ConfigError as exc:
            raise UsageFailure(exc.expected) from None
    _validate(document)
    document.write()
    shown = setting.shown(typed) if len(parts) == 1 else typed
    click.echo(f"{key} = {json.dumps(shown)}  (written to {path})")


@config.command("unset")
@click.argument("key")
@config_option
def config_unset(key: str, config_file: Path | None) -> None:
    """Remove KEY from the config file (its default applies again); dotted keys remove one
    entry of a table."""
    _cfg, pm = load_for_cli(config_file)
    parts = _split(key, _settings(pm))
    path = config_file or config_path()
    document = _read(path)
    if not document.remove(parts):  # (tables the removal leaves empty go too)
        click.echo(f"{key} is not set in {path}")
        return
    _validate(document)
    document.write()
    click.echo(f"{key} removed (from {path})")


def _settings(pm: Any) -> dict[str, Setting]:
    from sollol.core.plugin_manager import collect_named

    return {n: s for n, (s, _) in
            collect_named(pm, "sollol_register_settings", "config key").items()}


def _split(key: str, settings: dict[str, Setting]) -> list[str]:
    """KEY's parts, after checking its top-level key exists and holds a table if dotted."""
    parts = key.split(".")
    if parts[0] not in settings or any(not p for p in parts):
        close = closest(parts[0], settings, limit=2)
        hint = f"; did you mean {' or '.join(close)}?" if close else \
            f"; known keys: {', '.join(sorted(settings))}"
        raise UsageFailure(f"config key {key!r}: unknown key{hint}")
    if len(parts) > 1 and settings[parts[0]].kind != "table":
        raise UsageFailure(f"config key {key!r}: {parts[0]} is a {settings[parts[0]].kind}, "
                           "not a table (no dotted keys below it)")
    return parts


def _dig(value: Any, parts: list[str]) -> Any:
    for part in parts:
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _read(path: Path) -> ConfigDocument:
    try:
        return ConfigDocument.read(path)
    except ConfigError as exc:
        raise UsageFailure(str(exc)) from None


def _validate(document: ConfigDocument) -> None:
    """Load the would-be file as SOLLOL would (every key and each policy's settings); refuse
    it, with "did you mean" for unknown names, before anything is written. Errors name the
    config file: the copy checked is the command's business, not the operator's."""
    from sollol.core.loading import load  # not the runtime: config commands stay quick

    path = document.path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".check-", suffix=".toml", dir=path.parent)
    os.close(fd)
    try:
        document.write(Path(tmp))
        try:
            cfg, pm = load(path=tmp)
            _check_policies(cfg, pm)
        except ConfigError as exc:
            if exc.source == tmp:
                exc = ConfigError(exc.key, exc.value, exc.expected, str(path))
            raise UsageFailure(_with_hint(exc)) from None
        except PluginError as exc:
            raise UsageFailure(_with_hint(exc).replace(tmp, str(path))) from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def _check_policies(cfg: Any, pm: Any) -> None:
    """Build each policy named in `policy_settings`: its own checks reject bad settings."""
    from sollol.core.plugin_manager import collect_named
    from sollol.core.policy_chain import build_policy

    policies = collect_named(pm, "sollol_register_policies", "routing policy")
    table = cfg["policy_settings"]
    for name in table:
        if name not in policies:
            close = closest(name, policies, limit=2)
            hint = f"did you mean {' or '.join(close)}?" if close else \
                f"known policies: {', '.join(sorted(policies)) or 'none'}"
            raise ConfigError(f"policy_settings.{name}", table[name],
                              f"settings of a registered policy ({hint})")
        build_policy(name, policies, table)


def _with_hint(exc: Exception) -> str:
    """The error, plus "did you mean" when it lists the known names."""
    text = str(exc)
    expected = getattr(exc, "expected", "")
    key = getattr(exc, "key", "")
    if "(" in expected and key and "did you mean" not in text:
        known = [k.strip() for k in expected.split("(", 1)[1].rstrip(")").split(",")]
        close = closest(key.rsplit(".", 1)[-1], [k for k in known if k], limit=2)
        if close:
            text += f"; did you mean {' or '.join(close)}?"
    return text


