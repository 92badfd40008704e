"""`sollol run`: serve the gateway in the foreground until SIGINT or SIGTERM."""

from __future__ import annotations

from pathlib import Path

import click

from sollol.cli.common import UsageFailure, config_option, handle_errors, load_for_cli
from sollol.config import CORE_SETTINGS, load_config
from sollol.core.access import BIND_FIX, is_loopback, open_bind
from sollol.gateway.access_log import FORMATS, AccessLog

__all__ = ["is_loopback", "run"]
PORT_BUSY_EXIT = 3
"""Exit code of `sollol run` when its port is taken (documented in docs/cli.md)."""


class PortBusy(click.ClickException):
    """The gateway's address is in use: one line, exit code 3."""

    exit_code = PORT_BUSY_EXIT


def port_in_use(host: str, port: int) -> str | None:
    """Why `host:port` cannot be listened on now (in use), or None when it can."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
    except OSError:
        return None  # a name that does not resolve: the server reports it
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind(infos[0][4])
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return None
            return (f"port {port} on {host} is in use (another `sollol run`? `sollol status` "
                    "tells); pick another with --port or gateway_port")
    return None


def local_models() -> str:
    """The model a local cluster's pool serves (for the client examples)."""
    from sollol.local.model_set import SMALL

    return SMALL.name


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
@click.option("--ctx-size", "ctx_size", type=click.IntRange(min=256), default=None,
              metavar="TOKENS",
              help="With --local: tokens of context each request gets on its nodes "
                   "(default: local_ctx_size, 16384; Claude Code and Codex need 16384).")
@click.option("--insecure", is_flag=True,
              help="Serve beyond loopback without access keys (warned at every start).")
@click.option("--access-log", "access_log", type=click.Choice(FORMATS), default=None,
              help="Print a line per request on stdout: route, node, status, latency, tokens "
                   "(json: one JSON object per line).")
@config_option
@handle_errors
def run(plugins: tuple[str, ...], host: str | None, port: int | None, grace: float,
        local_size: int | None, ctx_size: int | None, insecure: bool, access_log: str | None,
        config_file: Path | None) -> None:
    """Serve the Ollama- and OpenAI-compatible gateway (Ctrl-C or SIGTERM stops it).

    SIGHUP re-reads the config file and environment: nodes and rpc-servers added or removed
    there join or leave at once; the log says what changed and what needs a restart.
    """
    from sollol.core.runtime import ClusterRuntime, load
    from sollol.gateway.server import serve

    overrides: dict[str, object] = {}
    if plugins:
        overrides["plugins"] = list(plugins)
    if host is not None:
        overrides["gateway_host"] = host
    if port is not None:
        overrides["gateway_port"] = port
    if ctx_size is not None:
        if local_size is None:
            raise UsageFailure("--ctx-size sets the context of the nodes --local starts: give "
                               "--local N too (start your own nodes with llama-server -c)")
        overrides["local_ctx_size"] = ctx_size
    # Before anything starts or binds: the core keys alone say whether this bind is safe.
    core = load_config(CORE_SETTINGS, path=config_file, overrides=overrides, ignore_unknown=True)
    problem = open_bind(core["gateway_host"], core["api_keys"])
    if problem and not insecure:
        raise UsageFailure(f"refusing to start: {problem}; {BIND_FIX}")
    busy = port_in_use(core["gateway_host"], core["gateway_port"])
    if busy:  # before a local cluster starts for nothing, and without uvicorn's traceback
        raise PortBusy(busy)
    if local_size is not None:  # stopped when the command ends, after the gateway
        from sollol.local.serve import start_local

        overrides.update(start_local(local_size, core["local_ctx_size"]))
    config, pm = load_for_cli(config_file, overrides)
    bind_host, bind_port = config["gateway_host"], config["gateway_port"]
    if problem:
        click.echo(f"warning: --insecure: {problem}", err=True)
    elif not is_loopback(bind_host):
        click.echo(f"access keys required ({len(config['api_keys'])} configured)", err=True)
    loaded = [name for name, info in sorted(pm.plugin_info.items()) if info.status == "enabled"]
    click.echo(f"sollol gateway on http://{bind_host}:{bind_port} "
               f"(plugins: {', '.join(loaded) or 'none'})", err=True)
    if local_size is not None:
        from sollol.local import report

        url = f"http://{bind_host}:{bind_port}"
        click.echo("point your clients at the gateway:", err=True)
        for line in report.clients(url, local_models()):
            click.echo(line, err=True)
    if access_log:
        pm.register(AccessLog(access_log), name="sollol-access-log")
    cluster = ClusterRuntime(config=config, pm=pm,
                      reloader=lambda: load(path=config_file, overrides=overrides)[0])
    serve(cluster, bind_host, bind_port, grace=grace, insecure=insecure)
    click.echo("sollol gateway stopped", err=True)
