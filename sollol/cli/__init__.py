"""The `sollol` command line. Plugin commands are attached in `main()`, never at import time."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from sollol import __version__
from sollol.cli.common import (
    UsageFailure,
    config_option,
    handle_errors,
    load_for_cli,
    operator_gguf,
)
from sollol.errors import ConfigError, PluginError, SollolError

__all__ = ["UsageFailure", "build_cli", "cli", "config_option", "handle_errors", "load_for_cli",
           "main", "operator_gguf"]


@click.group()
@click.version_option(__version__, prog_name="sollol")
def cli() -> None:
    """SOLLOL: one endpoint over a pool of LLM nodes and llama.cpp RPC sharding."""


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@config_option
@click.pass_context
@handle_errors
def plugins(ctx: click.Context, as_json: bool, config_file: Path | None) -> None:
    """List installed plugins: name, version, hooks, and whether they are enabled.

    `sollol plugins new NAME` starts a new plugin package.
    """
    if ctx.invoked_subcommand is not None:
        return
    from sollol.config import plugin_lists
    from sollol.core.plugin_manager import get_plugin_manager, implemented_hooks

    allow, block = plugin_lists(path=config_file)
    pm = get_plugin_manager(allow, block)
    rows = []
    for name, info in sorted(pm.plugin_info.items()):
        plugin = pm.get_plugin(name)
        hooks = implemented_hooks(pm, plugin) if plugin is not None else []
        rows.append({"name": name, "version": info.version, "distribution": info.distribution,
                     "status": info.status, "entry_point": info.entry_point, "hooks": hooks})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(f"{row['name']} {row['version'] or '?'} ({row['status']})")
        for hook in row["hooks"]:
            click.echo(f"  {hook}")


@plugins.command("new")
@click.argument("name")
@click.option("--kind", type=click.Choice(["backend", "policy", "command"]), default="backend",
              show_default=True, help="What the plugin adds: a server kind for the pool, a "
              "routing policy, or a command.")
@click.option("--dir", "parent", type=click.Path(file_okay=False, path_type=Path), default=".",
              show_default=True, help="Folder to create the package in.")
@handle_errors
def plugins_new(name: str, kind: str, parent: Path) -> None:
    """Write a new plugin package NAME: pyproject with the entry point, hooks, tests, README."""
    from sollol.scaffold import write

    root = write(name, kind, parent)
    click.echo(f"wrote {root}")
    click.echo(f"next: pip install -e '{root}[test]' && pytest {root}")


def add_core_commands(group: click.Group) -> None:
    """Attach the core's commands that live in their own modules."""
    from sollol.cli.batch import batch
    from sollol.cli.configure import config
    from sollol.cli.demo import demo
    from sollol.cli.doctor import doctor
    from sollol.cli.keys import keys
    from sollol.cli.llamacpp import llamacpp
    from sollol.cli.model_tools import models
    from sollol.cli.run import run
    from sollol.cli.service import install_service
    from sollol.cli.status import status

    for command in (run, demo, doctor, batch, keys, llamacpp, models, status, config,
                    install_service):
        group.add_command(command)


def build_cli() -> click.Group:
    """The CLI with the core's and every enabled plugin's commands attached."""
    return _build_cli()[0]


def _build_cli() -> tuple[click.Group, SollolError | None]:
    """The CLI, and the error that kept plugin commands out of it (if any)."""
    from sollol.config import plugin_lists
    from sollol.core.plugin_manager import get_plugin_manager

    add_core_commands(cli)
    try:
        allow, block = plugin_lists()
        pm = get_plugin_manager(allow, block)
    except (ConfigError, PluginError) as exc:
        # Keep core commands usable (config path/show) so the user can fix the problem.
        return cli, exc
    pm.hook.sollol_register_commands(cli=cli)
    return cli, None


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    args = argv if argv is not None else sys.argv[1:]
    group, error = _build_cli()
    if error is not None and (not args or args[0] not in group.commands):
        # Core commands report a bad config themselves; for a plugin's command (now missing)
        # or the command list, say why plugin commands are not there.
        click.echo(f"warning: plugin commands not loaded: {error}", err=True)
    group.main(args=args, prog_name="sollol")
