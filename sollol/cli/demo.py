"""`sollol demo`: a whole cluster on this machine, one batch through each route, then a report.

Everything the demo starts (rpc-servers, pool nodes, the gateway and its coordinators) is
stopped before it exits: on success, on an error, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from sollol.cli.common import config_option, handle_errors, load_for_cli

if TYPE_CHECKING:
    from sollol.config import Config
    from sollol.local import LocalCluster

INTERRUPTED = 130


@click.command()
@click.option("--keep", is_flag=True, help="Leave the cluster and gateway running until Ctrl-C.")
@click.option("--requests", "count", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Requests in the parallel batch across the pool.")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Gateway port (default: a free one).")
@config_option
@handle_errors
def demo(keep: bool, count: int, port: int | None, config_file: Path | None) -> None:
    """Start a local cluster (2 rpc-servers, 2 pool nodes, the gateway) and show it routing."""
    from sollol.local.signals import termination_as_interrupt

    with termination_as_interrupt():
        try:
            failed = _run(keep, count, port, config_file)
        except KeyboardInterrupt:
            click.echo("\ninterrupted: everything the demo started has been stopped", err=True)
            raise SystemExit(INTERRUPTED) from None
        except (RuntimeError, TimeoutError, OSError) as exc:  # a server or the gateway failed
            raise click.ClickException(f"{exc}\n(everything the demo started has been "
                                       "stopped)") from None
    if failed:
        raise click.ClickException(f"{failed} request(s) failed (see above)")


def _run(keep: bool, count: int, port: int | None, config_file: Path | None) -> int:
    from sollol.config import CORE_SETTINGS, load_config
    from sollol.local import LocalCluster, ensure_binaries
    from sollol.local.report import BuildPrinter

    click.echo(click.style("SOLLOL demo: a whole cluster on this machine", bold=True))
    _step(1, "llama.cpp binaries")
    binaries = ensure_binaries(BuildPrinter(), config_file=config_file)
    click.echo(f"  {binaries.llama_server}\n  {binaries.rpc_server}  (from {binaries.source})")
    settings = [s for s in CORE_SETTINGS if s.name == "local_ctx_size"]
    ctx_size = load_config(settings, path=config_file, ignore_unknown=True)["local_ctx_size"]
    local = LocalCluster(binaries=binaries, ctx_size=ctx_size,
                         say=lambda text: click.echo(f"  {text}"))
    _step(2, "models and servers")
    with local:
        failed = _with_cluster(local, keep, count, port, config_file)
        if failed:
            local.keep_logs = True
            click.echo(f"\nlogs kept in {local.run_dir}")
    click.echo("\nstopped everything the demo started")
    return failed


def _with_cluster(local: LocalCluster, keep: bool, count: int, port: int | None,
                  config_file: Path | None) -> int:
    from sollol.core.runtime import ClusterRuntime
    from sollol.gateway import GatewayThread
    from sollol.local import report
    from sollol.local.signals import uninterrupted

    models = local.models
    assert models is not None
    click.echo(f"  store {models.store} ({'generated' if models.created else 'reused'}):")
    click.echo(f"    {report.model_line(models.small)}\n    {report.model_line(models.large)}")
    for line in report.servers(local):
        click.echo(line)
    # The demo needs every installed plugin (pool, sharding, policies), whatever the config says.
    overrides = {**local.overrides(), "plugins": None, "disabled_plugins": []}
    config, pm = load_for_cli(config_file, overrides)
    gateway = GatewayThread(ClusterRuntime(config=config, pm=pm), port=port or 0)
    _step(3, "gateway")
    try:
        gateway.start(timeout=300)  # starts the routes: probes every node and rpc-server
        routes = ", ".join(sorted(gateway.gateway.cluster.routes))
        click.echo(f"  {gateway.url}  (routes: {routes}; policy {config['routing_policy']}: "
                   f"models of {_millions(config)} parameters or more are sharded)")
        failed = _traffic(gateway.url, local, count)
        _step(5, "point your clients at the gateway")
        for line in report.clients(gateway.url, models.small.name):
            click.echo(line)
        if keep and not failed:
            _wait(local)
        else:
            click.echo("  (this one stops now: `sollol demo --keep` or `sollol run --local 2` "
                       "keeps a cluster running)")
    finally:
        with uninterrupted():
            gateway.stop()
    return failed


def _traffic(url: str, local: LocalCluster, count: int) -> int:
    """Both routes at work; returns how many requests failed."""
    import httpx

    from sollol.local import report, traffic

    assert local.models is not None
    small, large = local.models.small, local.models.large
    _step(4, "requests")
    prompts = [traffic.PROMPTS[i % len(traffic.PROMPTS)] for i in range(count)]
    started = time.perf_counter()
    pooled = traffic.batch(url, small.name, prompts)
    wall = time.perf_counter() - started
    click.echo(f"  a parallel batch: {count} requests for {small.name}, all sent at once, "
               f"done in {wall:.2f}s")
    for line in report.replies(pooled):
        click.echo(line)
    click.echo(f"  pool spread: {report.spread(pooled)}")
    click.echo(f"\n  one request for {large.name} (the first one loads it onto the rpc-servers)")
    sharded = traffic.batch(url, large.name, [traffic.PROMPTS[0]])
    for line in report.replies(sharded):
        click.echo(line)
    click.echo("  layer distribution (from /sollol/routes/sharding):")
    try:
        snapshot = traffic.route_snapshot(url, "sharding")
    except httpx.HTTPError as exc:
        click.echo(f"  the sharding route's state is unavailable: {exc}")
        return sum(not r.ok for r in pooled) + 1
    for line in report.layers(snapshot, large.name):
        click.echo(line)
    click.echo("\n  routing decisions:")
    for line in report.decisions([*pooled, *sharded]):
        click.echo(line)
    embedded = _embeddings(url, small.name)
    return sum(not r.ok for r in [*pooled, *sharded]) + (not embedded)


def _embeddings(url: str, model: str) -> bool:
    """One embedding request: only the pool node started with --embeddings can serve it."""
    import httpx

    try:
        reply = httpx.post(url + "/api/embed", json={"model": model, "input": ["hello", "world"]},
                           timeout=120, trust_env=False)
    except httpx.HTTPError as exc:
        click.echo(f"\n  embeddings: FAILED ({exc})")
        return False
    if reply.status_code != 200:
        click.echo(f"\n  embeddings: FAILED (HTTP {reply.status_code}: {reply.text[:200]})")
        return False
    vectors = reply.json().get("embeddings") or []
    width = len(vectors[0]) if vectors else 0
    click.echo(f"\n  embeddings: {len(vectors)} vectors of {width} for {model} from "
               f"{reply.headers.get('x-sollol-backend')} (the pool node started with "
               "--embeddings; nodes without it are never asked)")
    return True


def _wait(local: LocalCluster) -> None:
    """Keep running until Ctrl-C; say so if a server dies meanwhile."""
    click.echo("\nthe cluster keeps running: press Ctrl-C to stop it")
    reported: set[str] = set()
    while True:
        time.sleep(1.0)
        for server in local.servers:
            if not server.process.alive() and server.address not in reported:
                reported.add(server.address)
                click.echo(f"warning: {server.role} {server.address} exited "
                           f"(log: {server.process.log_path})", err=True)
                local.keep_logs = True


def _step(number: int, title: str) -> None:
    click.echo(click.style(f"\n[{number}/5] {title}", bold=True))


def _millions(config: Config) -> str:
    table = config["policy_settings"].get(config["routing_policy"], {})
    value = table.get("min_parameters")
    return f"{value / 1e6:g}M" if isinstance(value, int | float) else "a set size"
