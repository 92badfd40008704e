"""`sollol run`: serve the gateway in the foreground until SIGINT or SIGTERM."""

from __future__ import annotations

from pathlib import Path

import click

from sollol.access import BIND_FIX, is_loopback, open_bind
from sollol.cli import UsageFailure, config_option, handle_errors, load_for_cli
from sollol.config import CORE_SETTINGS, load_config

__all__ = ["is_loopback", "run"]


@click.command()
@click.option("--plugin", "plugins", multiple=True, metavar="NAME",
              help="Load only these plugins (repeatable); overrides the `plugins` allow-list.")
@click.option("--host", default=None, help="Address to bind (default: gateway_host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port to listen on (default: gateway_port, 11435).")
@click.option("--grace", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Seconds in-flight requests may take to finish on shutdown.")
@click.option("--local", "local_size", type=click.IntRange(1, 16), default=None, metavar="N",
              help="Serve a local cluster started for this run: N pool nodes and N "
                   "rpc-servers on loopback, with generated models (see `sollol demo`).")
@click.option("--insecure", is_flag=True,
              help="Serve beyond loopback without access keys (warned at every start).")
@config_option
@handle_errors
def run(plugins: tuple[str, ...], host: str | None, port: int | None, grace: float,
        local_size: int | None, insecure: bool, config_file: Path | None) -> None:
    """Serve the Ollama- and OpenAI-compatible gateway (Ctrl-C or SIGTERM stops it).

    SIGHUP re-reads the config file and environment: nodes and rpc-servers added or removed
    there join or leave at once; the log says what changed and what needs a restart.
    """
    from sollol.cluster import Cluster, load
    from sollol.gateway.server import serve

    overrides: dict[str, object] = {}
    if plugins:
        overrides["plugins"] = list(plugins)
    if host is not None:
        overrides["gateway_host"] = host
    if port is not None:
        overrides["gateway_port"] = port
    # Before anything starts or binds: the core keys alone say whether this bind is safe.
    core = load_config(CORE_SETTINGS, path=config_file, overrides=overrides, ignore_unknown=True)
    problem = open_bind(core["gateway_host"], core["api_keys"])
    if problem and not insecure:
        raise UsageFailure(f"refusing to start: {problem}; {BIND_FIX}")
    if local_size is not None:  # stopped when the command ends, after the gateway
        from sollol.local.run import start_local

        overrides.update(start_local(local_size))
    config, pm = load_for_cli(config_file, overrides)
    bind_host, bind_port = config["gateway_host"], config["gateway_port"]
    if problem:
        click.echo(f"warning: --insecure: {problem}", err=True)
    elif not is_loopback(bind_host):
        click.echo(f"access keys required ({len(config['api_keys'])} configured)", err=True)
    loaded = [name for name, info in sorted(pm.plugin_info.items()) if info.status == "enabled"]
    click.echo(f"sollol gateway on http://{bind_host}:{bind_port} "
               f"(plugins: {', '.join(loaded) or 'none'})", err=True)
    cluster = Cluster(config=config, pm=pm,
                      reloader=lambda: load(path=config_file, overrides=overrides)[0])
    serve(cluster, bind_host, bind_port, grace=grace, insecure=insecure)
    click.echo("sollol gateway stopped", err=True)
