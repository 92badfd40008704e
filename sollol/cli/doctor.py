"""`sollol doctor`: check the set-up and print a fix for each problem; exit 1 when any is found."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import click

from sollol.cli.common import config_option

_MARKS = {"ok": ("ok  ", "green"), "warn": ("warn", "yellow"), "fail": ("FAIL", "red")}


@click.command()
@click.option("--timeout", type=click.FloatRange(min=0.1), default=3.0, show_default=True,
              help="Seconds each node or rpc-server may take to answer.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@config_option
def doctor(timeout: float, as_json: bool, config_file: Path | None) -> None:
    """Check config, binaries, nodes, rpc-servers, the model store and the gateway port."""
    from sollol.cli.checks import problems, run_checks

    findings = run_checks(config_file, timeout=timeout)
    failed = list(problems(findings))
    if as_json:
        click.echo(json.dumps([attrs.asdict(f) for f in findings], indent=2))
    else:
        for finding in findings:
            mark, colour = _MARKS[finding.status]
            click.echo(f"{click.style(mark, fg=colour)}  {finding.subject}: {finding.detail}")
            if finding.fix and finding.status != "ok":
                click.echo(f"      fix: {finding.fix}")
        warned = sum(f.status == "warn" for f in findings)
        summary = (f"{len(failed)} problem(s), {warned} warning(s)" if failed or warned
                   else "everything looks right")
        click.echo(f"\n{summary}")
    if failed:
        raise SystemExit(1)
