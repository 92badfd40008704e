"""`sollol join --install-service`: the unit, and the token in a 0600 file beside it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .join_unit import JoinUnit, render, token_file_text
from .tokens import write_private

UNIT_NAME = "sollol-join"


def token_path(user_unit: bool, output: Path | None) -> Path:
    """Where the token file goes: beside --output, else /etc/sollol or the user's config."""
    if output is not None:
        return output.with_name(output.stem + ".env")
    if user_unit:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        return base / "sollol" / "join.env"
    return Path("/etc/sollol/join.env")


def install(url: str, token: str, name: str, listen: str, rpc: bool, devices: str | None,
            threads: int | None, pool_nodes: tuple[str, ...], no_pool: bool,
            rpc_binary: Path | None, user_unit: bool, run_as: str | None, dry_run: bool,
            output: Path | None, config_file: Path | None, *, announce: bool = True) -> None:
    from sollol.cli.service import emit_unit, program_needs, refuse_unreadable
    from sollol.cli.unit_access import Need

    args = [url, "--name", name, "--listen", listen]
    if not rpc:
        args.append("--no-rpc")
    if devices:
        args += ["--devices", devices]
    if threads:
        args += ["--threads", str(threads)]
    for node in pool_nodes:
        args += ["--pool-node", node]
    if no_pool:
        args.append("--no-pool")
    if not announce:
        args.append("--no-announce")
    if config_file is not None:
        args += ["--config", str(config_file.resolve())]
    run_as = None if user_unit else (run_as or os.environ.get("SUDO_USER") or None)
    if not user_unit and not dry_run:
        needs = program_needs()
        if rpc_binary is not None:
            needs.append(Need(rpc_binary, "ggml-rpc-server", execute=True))
        refuse_unreadable(needs, run_as)
    secret = token_path(user_unit, output)
    unit = JoinUnit(Path(sys.executable), rpc_binary.parent if rpc_binary else None, secret,
                    tuple(args), user_unit, run_as)
    try:
        text = render(unit)
    except ValueError as exc:  # a program path systemd cannot run
        raise click.ClickException(str(exc)) from None
    if dry_run:
        click.echo(f"# the token would be written to {secret} (mode 0600)", err=True)
        emit_unit(text, UNIT_NAME, user_unit, output, dry_run)
        return
    try:
        write_private(secret, token_file_text(token).encode())
    except PermissionError:
        raise click.ClickException(f"cannot write {secret}: run as root, or use --user") \
            from None
    click.echo(f"wrote the join token to {secret} (mode 0600)")
    emit_unit(text, UNIT_NAME, user_unit, output, dry_run)
