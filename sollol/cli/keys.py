"""`sollol keys`: make, list and revoke the gateway's access keys (only hashes are stored)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from sollol.cli.common import UsageFailure, config_option, handle_errors
from sollol.cli.config_file import ConfigDocument
from sollol.cli.credentials import key_file, save_key
from sollol.config import CORE_SETTINGS, config_path, load_config, read_file
from sollol.core import access

ENV_VAR = "SOLLOL_API_KEYS"


def _file_entries(path: Path) -> tuple[ConfigDocument, list[Any]]:
    """The config file (edited in place: comments and order stay) and its `api_keys`."""
    data = ConfigDocument.read(path)
    entries = data.get("api_keys", [])
    if not isinstance(entries, list):
        raise UsageFailure(f"api_keys in {path} is not a list; fix it by hand first")
    try:
        access.parse_entries(entries)
    except ValueError as exc:
        raise UsageFailure(f"api_keys in {path}: {exc}") from None
    return data, entries


def _env_note() -> None:
    if os.environ.get(ENV_VAR):
        click.echo(f"note: {ENV_VAR} is set and takes precedence over the file's api_keys",
                   err=True)


@click.group()
def keys() -> None:
    """Make, list and revoke the gateway's access keys."""


@keys.command("create")
@click.argument("name")
@click.option("--admin", is_flag=True,
              help="May also pull, create, copy, delete and push models and read /sollol/*.")
@click.option("--models", "models", default="*", show_default=True, metavar="GLOB,...",
              help="Models the key may use (comma-separated globs, e.g. 'llama3*,qwen*').")
@click.option("--save/--no-save", "save", default=None,
              help="Also keep the key for this account's `sollol` commands, in a 0600 file "
                   "beside the config (asked for an admin key on a terminal).")
@config_option
@handle_errors
def create(name: str, admin: bool, models: str, save: bool | None,
           config_file: Path | None) -> None:
    """Make a key NAME, print it once, and save only its hash in the config file.

    The CLI sends $SOLLOL_KEY, else the key saved with --save, to a running gateway.
    """
    path = config_file or config_path()
    data, entries = _file_entries(path)
    key = access.new_key()
    entry = {"name": name, "hash": access.hash_key(key), "admin": admin,
             "models": [m.strip() for m in models.split(",") if m.strip()]}
    try:
        access.parse_entries([*entries, entry])
    except ValueError as exc:
        raise UsageFailure(str(exc)) from None
    data.set(["api_keys"], [*entries, entry])
    data.write()
    click.echo(key)
    scope = "admin" if admin else "inference"
    click.echo(f"saved key {name!r} ({scope}, models {', '.join(entry['models'])}) to {path} as "
               "a hash: this is the only time the key is shown; a running gateway accepts it "
               "after a reload (`kill -HUP PID` or `systemctl reload sollol`)", err=True)
    if save is None and admin and sys.stdin.isatty():
        save = click.confirm(f"save it for this account's sollol commands ({key_file()}, "
                             "readable by you only)?", default=True, err=True)
    if save:
        click.echo(f"the sollol commands now send this key (saved in {save_key(key)}; "
                   f"{access.KEY_ENV} takes precedence when set)", err=True)
    elif admin:
        click.echo(f"the sollol commands send it once you set {access.KEY_ENV} or save it "
                   f"(`--save`)", err=True)
    _env_note()


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@config_option
@handle_errors
def list_keys(as_json: bool, config_file: Path | None) -> None:
    """List the keys the gateway accepts: name, scope, models and where each is set."""
    config = load_config(CORE_SETTINGS, path=config_file, ignore_unknown=True)
    source = config.sources["api_keys"]
    plain = set()
    if source == str(config.path):
        for index, entry in enumerate(read_file(config.path).get("api_keys", [])):
            if isinstance(entry, str) or (isinstance(entry, dict) and "key" in entry):
                plain.add(access.parse_entry(entry, index).name)
    rows = [{**k.describe(), "source": source,
             "stored": "plain text" if k.name in plain else "hash"}
            for k in access.KeyRing.from_config(config["api_keys"]).keys]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no access keys: the gateway serves anyone who can reach it (fine on "
                   "127.0.0.1); make one with `sollol keys create NAME`")
        return
    for row in rows:
        scope = "admin" if row["admin"] else "inference"
        click.echo(f"{row['name']}  {scope}  models {','.join(row['models'])}  "
                   f"({row['source']}{', stored in plain text' if row['name'] in plain else ''})")


@keys.command("revoke")
@click.argument("name")
@config_option
@handle_errors
def revoke(name: str, config_file: Path | None) -> None:
    """Remove key NAME from the config file (a running gateway applies it on reload)."""
    path = config_file or config_path()
    data, entries = _file_entries(path)
    kept = [e for i, e in enumerate(entries) if access.parse_entry(e, i).name != name]
    if len(kept) == len(entries):
        known = ", ".join(access.parse_entry(e, i).name for i, e in enumerate(entries))
        raise click.ClickException(f"no key named {name!r} in {path} (keys there: "
                                   f"{known or 'none'})")
    data.set(["api_keys"], kept)
    data.write()
    click.echo(f"revoked key {name!r} in {path}; a running gateway applies it on reload "
               "(`kill -HUP PID` or POST /sollol/reload)")
    _env_note()
