"""`sollol install-service`: a hardened systemd unit that runs the gateway (`sollol run`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from sollol.cli.common import config_option, handle_errors, load_for_cli
from sollol.cli.systemd import write_unit
from sollol.cli.unit_access import Account, Need, unreadable
from sollol.config import config_path
from sollol.gateway.access_log import FORMATS


@click.command("install-service")
@click.option("--dry-run", is_flag=True, help="Print the unit instead of writing it.")
@click.option("--user", "user_unit", is_flag=True, help="A systemd user unit (no root needed).")
@click.option("--name", default="sollol", show_default=True, help="Unit name.")
@click.option("--run-as", help="Account for a system unit (default: $SUDO_USER, else a "
                               "DynamicUser).")
@click.option("--host", default=None,
              help="Address the gateway binds, as `sollol run --host` (default: gateway_host).")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port, as `sollol run --port` (default: gateway_port).")
@click.option("--access-log", "access_log", type=click.Choice(FORMATS), default=None,
              help="Have the gateway log a line per request (to the journal).")
@click.option("--grace", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Seconds in-flight requests may take to finish when the unit stops.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the unit here instead of systemd's folder.")
@config_option
@handle_errors
def install_service(dry_run: bool, user_unit: bool, name: str, run_as: str | None,
                    host: str | None, port: int | None, access_log: str | None, grace: float,
                    output: Path | None, config_file: Path | None) -> None:
    """Write a hardened systemd unit that runs the gateway with this config file.

    The unit runs `sollol run` with the --host and --port given here. It is refused, with the
    fix, when it could not start: a config that does not load, an address that is not safe to
    serve (beyond loopback without access keys), or files its account cannot read.
    `systemctl reload` re-reads the config.
    """
    from sollol.cli.gateway_unit import GatewaySpec, render
    from sollol.core.access import BIND_FIX, is_loopback, open_bind
    from sollol.errors import BinaryNotFound
    from sollol.llamacpp import find_binaries

    path = (config_file or config_path()).expanduser().resolve()
    if not path.is_file():
        raise click.ClickException(f"no config file at {path}: the unit runs the gateway with "
                                   "one (write it with `sollol config set KEY VALUE`)")
    config, _pm = load_for_cli(path)
    bind = host or config["gateway_host"]
    problem = open_bind(bind, config["api_keys"])
    if problem:
        raise click.ClickException(f"the gateway would refuse to start: {problem}; {BIND_FIX}")
    if host is None and is_loopback(bind):
        click.secho(f"warning: the service will listen on {bind} only (gateway_host in {path}): "
                    "other machines cannot reach it; pass --host 0.0.0.0 to serve the network",
                    fg="yellow", err=True)
    needs = [*program_needs(), Need(path, "the config file")]
    environment: dict[str, str] = {}
    try:  # the service account may not see this user's build cache: name the binaries
        binaries = find_binaries(config)
        environment["SOLLOL_LLAMA_CPP_DIR"] = str(binaries.llama_server.parent)
        needs += [Need(binaries.llama_server, "llama-server", execute=True),
                  Need(binaries.rpc_server, "ggml-rpc-server", execute=True)]
    except BinaryNotFound as exc:
        click.secho(f"warning: {exc}; sharding will be unavailable", fg="yellow", err=True)
    if os.environ.get("OLLAMA_MODELS"):
        environment["OLLAMA_MODELS"] = os.environ["OLLAMA_MODELS"]
    writable = tuple(Path(p).expanduser().resolve() for p in [config.get("rpc_state_dir")] if p)
    run_as = None if user_unit else (run_as or os.environ.get("SUDO_USER") or None)
    if not user_unit:
        refuse_unreadable(needs, run_as)
    args = [*(("--host", host) if host else ()), *(("--port", str(port)) if port else ()),
            *(("--access-log", access_log) if access_log else ())]
    spec = GatewaySpec(Path(sys.executable), path, environment, tuple(args), user_unit, run_as,
                       writable, grace)
    try:
        text = render(spec)
    except ValueError as exc:  # a path systemd cannot run or hold
        raise click.ClickException(str(exc)) from None
    emit_unit(text, name, user_unit, output, dry_run)


def program_needs() -> list[Need]:
    """What any unit running `python -m sollol ...` reads: the interpreter and the packages."""
    import sollol

    return [Need(Path(sys.executable), "the Python interpreter", execute=True),
            Need(Path(sollol.__file__).parent, "SOLLOL's package")]


def refuse_unreadable(needs: list[Need], run_as: str | None) -> None:
    """A one-line error with the fix when a system unit's account could not read what it runs."""
    try:
        account = Account.named(run_as)
    except KeyError:
        raise click.ClickException(f"--run-as {run_as}: no such account on this machine") \
            from None
    problems = unreadable(needs, account)
    if not problems:
        return
    who = "--run-as an account that can read them" if run_as else (
        "--run-as USER (an account that can read them; a DynamicUser reads only what everyone "
        "may)")
    raise click.ClickException(
        "the unit could not start: " + "; ".join(problems) + f". Fix: pass {who}, or install "
        "system-wide: SOLLOL in a virtualenv under /opt, `sollol llamacpp install --prefix "
        "/usr/local`, and a config readable by the service's account")


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
