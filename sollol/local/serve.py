"""`sollol run --local N`: a local cluster that lives exactly as long as the command."""

from __future__ import annotations

from typing import Any

import click


def start_local(size: int, ctx_size: int) -> dict[str, Any]:
    """Start N pool nodes and N rpc-servers, each request getting `ctx_size` tokens of
    context; return the config overrides that use them.

    The cluster is a resource of the current click context: it is stopped when the command
    ends, however it ends (the gateway stops its own coordinators first).
    """
    from sollol.local import LocalCluster, ensure_binaries, report

    def say(text: str) -> None:
        click.echo(f"local cluster: {text}", err=True)

    local = LocalCluster(pool_nodes=size, shards=size, ctx_size=ctx_size,
                         binaries=ensure_binaries(report.BuildPrinter(err=True)), say=say)
    try:
        click.get_current_context().with_resource(local)
    except (RuntimeError, TimeoutError, OSError) as exc:  # a server failed to start (and stopped)
        raise click.ClickException(f"the local cluster failed to start: {exc}") from None
    assert local.models is not None
    for line in report.servers(local):
        say(line.strip())
    say(f"models: {local.models.small.name} (pool), {local.models.large.name} (sharded); "
        f"context: {ctx_size} tokens per request (--ctx-size)")
    return local.overrides()
