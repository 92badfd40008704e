"""`sollol batch IN.jsonl`: run one request per line through the cluster, resumably."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from sollol.cli.common import UsageFailure, config_option, handle_errors

if TYPE_CHECKING:
    from sollol.cli.batch_job import BatchSummary

INTERRUPTED_EXIT = 130
"""Exit status after SIGINT/SIGTERM (as a shell reports a Ctrl-C)."""


def default_output(path: Path) -> Path:
    """`tasks.jsonl` -> `tasks.out.jsonl`, next to the input."""
    return path.with_name(f"{path.stem if path.suffix == '.jsonl' else path.name}.out.jsonl")


@click.command()
@click.argument("input_file", metavar="IN.jsonl",
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Results file, appended to (default: IN.out.jsonl next to IN).")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Requests in flight at once (default: the capacity of the serving nodes).")
@click.option("--model", default=None, help="Model for lines that name none.")
@click.option("--node", "nodes", multiple=True, metavar="ADDR",
              help="Pool node to use instead of `ollama_nodes` (repeatable; "
                   "host:port, ollama://... or openai://...).")
@click.option("--plugin", "plugins", multiple=True, metavar="NAME",
              help="Load only these plugins (repeatable).")
@click.option("--gateway", metavar="URL", default=None,
              help="Send the requests to this running gateway instead of routing them here.")
@click.option("--retry-failed", is_flag=True,
              help="Run again the lines whose earlier result is an error.")
@click.option("--no-progress", is_flag=True, help="Do not draw the progress bar.")
@config_option
@handle_errors
def batch(input_file: Path, output: Path | None, concurrency: int | None, model: str | None,
          nodes: tuple[str, ...], plugins: tuple[str, ...], gateway: str | None,
          retry_failed: bool, no_progress: bool, config_file: Path | None) -> None:
    """Run one chat, generate or embed request per line of IN.jsonl, in parallel (here, or
    through a running gateway with --gateway).

    Each line is a JSON object with an "id", an "op" (chat, generate, embed; optional when
    "messages", "prompt" or "input" tells), a "model" and Ollama request fields. Each result
    is appended to the output as one JSON line as soon as it is done; a rerun skips ids that
    are already there, so an interrupted batch resumes where it stopped. Exits 1 when any line
    failed, 130 when interrupted.
    """
    import asyncio

    from sollol.cli import batch_job as runner
    from sollol.cli.batch_io import BatchInputError, read_input
    from sollol.cli.progress import Progress
    from sollol.client.facade import Cluster

    if gateway and (nodes or plugins or config_file):
        raise UsageFailure("--gateway sends every request to that gateway (its nodes, plugins "
                           "and config): drop --node, --plugin and --config")
    output = output or default_output(input_file)
    if output.resolve() == input_file.resolve():
        raise UsageFailure("the output file must not be the input file")
    try:
        items = read_input(input_file, model)
        todo = runner.plan(items, output, retry_failed=retry_failed)
    except BatchInputError as exc:
        raise UsageFailure(str(exc)) from None
    done = todo.done_ok + todo.done_failed
    if done:
        click.echo(f"resuming: {done} of {todo.total} lines already in {output}"
                   + (f" ({todo.done_failed} failed; --retry-failed runs them again)"
                      if todo.done_failed else ""), err=True)
    summary = runner.BatchSummary(todo.total, done, failed_before=todo.done_failed)
    if todo.pending:
        cluster = (Cluster(gateway=gateway) if gateway else
                   Cluster(config_file, nodes=nodes or None, plugins=plugins or None))
        progress = Progress(len(todo.pending), enabled=not no_progress)

        async def main() -> runner.BatchSummary:
            async with cluster:
                return await runner.run(cluster, todo, output, concurrency=concurrency,
                                        progress=progress)

        summary = asyncio.run(main())
    _report(summary, output)


def _report(summary: BatchSummary, output: Path) -> None:
    ran = f"{summary.ok} ok, {summary.failed} failed"
    if summary.concurrency:
        ran += f" at concurrency {summary.concurrency}"
    click.echo(f"batch: {summary.total} lines; {ran}; {summary.done_before} done earlier "
               f"-> {output}", err=True)
    if summary.interrupted:
        click.echo(f"interrupted: {summary.left} lines left; run the same command again to "
                   "resume", err=True)
        click.get_current_context().exit(INTERRUPTED_EXIT)
    if summary.failed or summary.failed_before:
        failed = summary.failed + summary.failed_before
        click.echo(f"{failed} line(s) failed; their errors are in {output}", err=True)
        click.get_current_context().exit(1)
