"""`sollol install-service`: a hardened systemd unit that runs the gateway (`sollol run`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from sollol.cli.common import config_option, handle_errors, load_for_cli
from sollol.cli.systemd import write_unit
from sollol.config import config_path
from sollol.gateway.access_log import FORMATS


@click.command("install-service")
@click.option("--dry-run", is_flag=True, help="Print the unit instead of writing it.")
@click.option("--user", "user_unit", is_flag=True, help="A systemd user unit (no root needed).")
@click.option("--name", default="sollol", show_default=True, help="Unit name.")
@click.option("--run-as", help="Account for a system unit (default: $SUDO_USER, else a "
                               "DynamicUser).")
@click.option("--access-log", "access_log", type=click.Choice(FORMATS), default=None,
              help="Have the gateway log a line per request (to the journal).")
@click.option("--grace", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Seconds in-flight requests may take to finish when the unit stops.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the unit here instead of systemd's folder.")
@config_option
@handle_errors
def install_service(dry_run: bool, user_unit: bool, name: str, run_as: str | None,
                    access_log: str | None, grace: float, output: Path | None,
                    config_file: Path | None) -> None:
    """Write a hardened systemd unit that runs the gateway with this config file.

    The config must exist and load (the unit would fail to start otherwise); its address must
    be safe to serve (loopback, or access keys configured). `systemctl reload` re-reads it.
    """
    from sollol.cli.gateway_unit import GatewaySpec, render
    from sollol.core.access import BIND_FIX, open_bind
    from sollol.errors import BinaryNotFound
    from sollol.llamacpp import find_binaries

    path = (config_file or config_path()).expanduser().resolve()
    if not path.is_file():
        raise click.ClickException(f"no config file at {path}: the unit runs the gateway with "
                                   "one (write it with `sollol config set KEY VALUE`)")
    config, _pm = load_for_cli(path)
    problem = open_bind(config["gateway_host"], config["api_keys"])
    if problem:
        raise click.ClickException(f"the gateway would refuse to start: {problem}; {BIND_FIX}")
    environment: dict[str, str] = {}
    try:  # the service account may not see this user's build cache: name the binaries
        environment["SOLLOL_LLAMA_CPP_DIR"] = str(find_binaries(config).llama_server.parent)
    except BinaryNotFound as exc:
        click.secho(f"warning: {exc}; sharding will be unavailable", fg="yellow", err=True)
    if os.environ.get("OLLAMA_MODELS"):
        environment["OLLAMA_MODELS"] = os.environ["OLLAMA_MODELS"]
    writable = tuple(Path(p).expanduser().resolve() for p in [config.get("rpc_state_dir")] if p)
    run_as = None if user_unit else (run_as or os.environ.get("SUDO_USER") or None)
    python = Path(sys.executable)
    spec = GatewaySpec(python, path, environment,
                       ("--access-log", access_log) if access_log else (), user_unit, run_as,
                       writable, grace)
    try:
        text = render(spec)
    except ValueError as exc:  # a path systemd cannot run or hold
        raise click.ClickException(str(exc)) from None
    if not user_unit and run_as is None and str(python).startswith(("/root/", "/home/")):
        click.secho(f"warning: {python} is in a home folder, which a DynamicUser cannot read; "
                    "pass --run-as USER or install SOLLOL system-wide", fg="yellow", err=True)
    emit_unit(text, name, user_unit, output, dry_run)


def emit_unit(text: str, name: str, user_unit: bool, output: Path | None,
              dry_run: bool) -> None:
    """Print a unit (--dry-run), or write it and say how to start it (a one-line error when a
    system unit needs root)."""
    if dry_run:
        click.echo(text, nl=False)
        return
    try:
        target, start = write_unit(text, name, user_unit, output)
    except PermissionError as exc:
        raise click.ClickException(f"cannot write {exc.filename}: run as root, or use --user") \
            from None
    click.echo(f"wrote {target}\nnext: {start}")
