"""`sollol join [URL] --token T`: make this machine a member of a SOLLOL cluster."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import click

from sollol.cli import config_option, handle_errors, load_for_cli

from .errors import BadToken
from .tokens import JoinToken

TOKEN_ENV = "SOLLOL_JOIN_TOKEN"


def default_name() -> str:
    """The host name, cut to what a member name may hold."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname().split(".")[0]).strip("-._")
    return (name or "worker")[:63]


def _listen(text: str) -> tuple[str, int]:
    from sollol.models import split_host_port

    try:
        return split_host_port(text, 50053)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from None


def _say(text: str) -> None:
    click.echo(f"sollol join: {text}", err=True)


@click.command("join")
@click.argument("url", required=False)
@click.option("--token", envvar=TOKEN_ENV, metavar="TOKEN",
              help=f"The join token from `sollol cluster token create` (also ${TOKEN_ENV}).")
@click.option("--name", default=default_name, show_default="this host's name",
              help="The name this machine joins under.")
@click.option("--listen", "listen_text", default="0.0.0.0:50053", show_default=True,
              metavar="HOST:PORT", help="Where the gateway's mutual-TLS links connect to.")
@click.option("--rpc/--no-rpc", default=True, show_default=True,
              help="Run and offer an rpc-server (a shard for model sharding).")
@click.option("--devices", metavar="NAMES",
              help="The rpc-server's devices, as `sollol rpc serve --devices` (default: every "
                   "GPU, else the CPU).")
@click.option("--threads", type=click.IntRange(1), help="The rpc-server's CPU threads.")
@click.option("--pool-node", "pool_nodes", multiple=True, metavar="URL",
              help="A pool node on this machine to offer (repeatable; e.g. "
                   "http://127.0.0.1:11434, openai://127.0.0.1:8080). Default: an Ollama on "
                   "127.0.0.1:11434 and a llama-server on 127.0.0.1:8080 when they answer.")
@click.option("--no-pool", is_flag=True, help="Offer no pool node (no detection).")
@click.option("--announce/--no-announce", default=True, show_default=True,
              help="Announce this machine on the LAN by mDNS (`_sollol-worker._tcp`: its name, "
                   "version and port, no secret) so gateways list it in `sollol cluster "
                   "discovered`.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where this machine's key and certificate live (default: the user data dir).")
@click.option("--install-service", is_flag=True,
              help="Write a systemd unit that runs this command (the token goes to a 0600 "
                   "file, not the unit), instead of running it.")
@click.option("--user", "user_unit", is_flag=True,
              help="With --install-service: a systemd user unit (no root needed).")
@click.option("--run-as", help="With --install-service: the system unit's account (default: "
                               "$SUDO_USER, else a DynamicUser).")
@click.option("--dry-run", is_flag=True, help="With --install-service: print the unit.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="With --install-service: write the unit here.")
@config_option
@handle_errors
def join(url: str | None, token: str | None, name: str, listen_text: str, rpc: bool,
         devices: str | None, threads: int | None, pool_nodes: tuple[str, ...], no_pool: bool,
         announce: bool, state_dir: Path | None, install_service: bool, user_unit: bool,
         run_as: str | None, dry_run: bool, output: Path | None,
         config_file: Path | None) -> None:
    """Join the SOLLOL cluster whose gateway is at URL (found on the LAN when left out).

    Runs this machine's rpc-server on 127.0.0.1 only and carries the gateway's links to it
    (and to the pool nodes offered) over mutual TLS on --listen; reports devices and free
    memory every few seconds; rejoins by itself after a gateway restart or a cut link. Stops
    with the reason when the gateway refuses it; leaves the cluster on SIGTERM / Ctrl-C.
    """
    if not token:
        raise click.UsageError(f"give the join token: --token TOKEN (or ${TOKEN_ENV}); "
                               "on the gateway: sollol cluster token create")
    try:
        parsed = JoinToken.parse(token)
    except BadToken as exc:
        raise click.UsageError(str(exc)) from None
    from .members import NAME

    if not NAME.match(name):
        raise click.BadParameter("1-63 letters, digits, '.', '_' or '-'", param_hint="--name")
    host, port = _listen(listen_text)
    # httpx and asyncio only here, so `sollol --help` stays light (test_startup_imports)
    import asyncio

    from .machine import binary_listing, detect_pool_nodes, parse_pool_node

    try:
        nodes = tuple(parse_pool_node(text) for text in pool_nodes)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    config, _pm = load_for_cli(config_file)
    rpc_binary = _rpc_binary(config) if rpc else None
    if url is None:
        url = _find_gateway(parsed)
    url = url if "://" in url else f"http://{url}"
    if install_service:
        from .join_install import install

        install(url, token, name, listen_text, rpc, devices, threads, pool_nodes, no_pool,
                rpc_binary, user_unit, run_as, dry_run, output, config_file, announce=announce)
        return
    if not nodes and not no_pool:
        nodes = tuple(detect_pool_nodes())
    for node in nodes:
        _say(f"offering the {node.kind} pool node on 127.0.0.1:{node.port}")
    from .agent import Agent, JoinOptions, Stop
    from .machine import DeviceReport
    from .worker_state import default_state_dir

    options = JoinOptions(url, parsed, name, host, port, rpc, 0, devices, threads, nodes,
                          state_dir or default_state_dir(), config_file, announce)
    report = DeviceReport(binary_listing(rpc_binary) if rpc_binary else None)
    try:
        asyncio.run(Agent(options, _say, report).run())
    except Stop as exc:
        raise click.ClickException(str(exc)) from None


def _rpc_binary(config: object) -> Path:
    from sollol.errors import BinaryNotFound
    from sollol.llamacpp import find_binaries, for_serving

    try:
        return for_serving(find_binaries(config)).rpc_server
    except BinaryNotFound as exc:
        raise click.ClickException(f"{exc} (or join with --no-rpc)") from None


def _find_gateway(token: JoinToken) -> str:
    """The gateway on the LAN whose CA the token pins (mDNS/DNS-SD)."""
    try:
        from .lan import find_gateways
    except ImportError:
        raise click.UsageError("give the gateway's URL (finding it on the LAN is not "
                               "available in this installation)") from None
    _say("looking for the gateway on the LAN (mDNS)...")
    try:
        found = find_gateways(5.0)
    except OSError as exc:
        raise click.ClickException(f"cannot look for the gateway on the LAN ({exc}); give "
                                   "its URL") from None
    for gateway in found:
        if gateway.pin == token.pin:
            _say(f"found the gateway at {gateway.url}")
            return str(gateway.url)
    others = f" ({len(found)} other cluster(s) answered)" if found else ""
    raise click.ClickException(f"no gateway of this token's cluster answered on the LAN{others}; "
                               "give its URL: sollol join http://GATEWAY:11435 --token ...")
