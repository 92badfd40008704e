"""`sollol nodes` (the pool's nodes and their state) and `sollol pull` (a model onto many nodes)."""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from sollol.cli import config_option, handle_errors, load_for_cli
from sollol.cli.gateway_client import (
    call,
    gateway_client,
    gateway_option,
    gateway_url,
    item,
    read_json,
    refusal_hint,
    reply_text,
)
from sollol.core.logtext import escape_strings

if TYPE_CHECKING:
    from rich.table import Table

    from .pull_progress import PullProgress

T = TypeVar("T")
UNWRAPPED = 10_000
"""Columns for the plain-text table: wide enough that no row is wrapped or cut."""


def _with_route(config_file: Path | None, work: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
    """Start a pool route from the config (one probe round), run `work(route)`, stop it."""
    import asyncio

    from sollol.core.runtime import ClusterRuntime

    from .pool_route import PoolRoute

    config, pm = load_for_cli(config_file)

    async def main() -> T:
        route = PoolRoute(ClusterRuntime(config=config, pm=pm))
        await route.start()
        try:
            return await work(route)
        finally:
            await route.stop()

    return asyncio.run(main())


def _gateway_nodes(url: str) -> dict[str, Any] | None:
    """The live pool state from a running gateway, or None when none answers."""
    import httpx

    try:
        with gateway_client(url, timeout=2.0) as client:
            reply = client.get("/sollol/nodes")
    except httpx.HTTPError:
        return None
    if reply.status_code in (401, 403):  # a gateway is there: probing here would answer else
        raise click.ClickException(f"gateway {url} refused GET /sollol/nodes (HTTP "
                                   f"{reply.status_code}){refusal_hint(reply.status_code)}")
    if reply.status_code != 200:
        return None
    try:
        data = read_json(reply)
    except ValueError:  # something else listens there, not a SOLLOL gateway
        return None
    return data if isinstance(data, dict) else None


def _size(value: Any) -> str:
    if not value:
        return "-"
    return f"{value / 2**30:.1f}G"


def _row(node: dict[str, Any]) -> list[str]:
    until = node.get("ejected_until")
    speed = node.get("tokens_per_second")
    # Ollama says what its loaded models hold on the GPU (/api/ps size_vram), never its total:
    # free memory needs the total declared in pool_node_memory (or a joined machine reports it)
    vram = node.get("vram_used")
    on_gpu = f"{vram / 2**30:.1f}G on GPU" if isinstance(vram, int) else ""
    memory = on_gpu or "-"
    if node.get("memory_total"):
        memory = f"{_size(node.get('memory_free'))}/{_size(node['memory_total'])} free"
        memory += f", {on_gpu}" if vram else ""
    return [node["id"], node.get("api") or node["kind"], node["health"],
            time.strftime("%H:%M:%S", time.localtime(until)) if until else "-",
            f"{node['in_flight']}/{node['limit']}", ", ".join(node.get("loaded") or []) or "-",
            memory, f"{speed:.1f} tok/s" if speed else "-"]


HEADER = ("NODE", "KIND", "HEALTH", "EJECTED UNTIL", "IN FLIGHT", "LOADED", "MEMORY", "SPEED")
WHOLE = ("NODE", "HEALTH")
"""Columns never wrapped; the others wrap on a narrow terminal, only between words."""
HEALTH_STYLES = {"healthy": "green", "down": "red"}
"""Other states (ejected, unknown, ...) are yellow."""


def node_table(snapshot: dict[str, Any]) -> Table:
    """The pool's nodes as a rich table: borderless columns, health in colour."""
    from rich.table import Table
    from rich.text import Text

    rows = [_row(node) for node in snapshot.get("nodes", [])]
    table = Table(box=None, pad_edge=False, header_style="bold")
    for index, name in enumerate(HEADER):
        if name in WHOLE:
            table.add_column(name, no_wrap=True)
        else:
            words = [w for row in rows for w in row[index].split()] + name.split()
            table.add_column(name, min_width=max(map(len, words)), overflow="fold")
    for node, row in zip(snapshot.get("nodes", []), rows, strict=True):
        cells = [Text(cell) for cell in row]  # ids and model names are not markup
        cells[2].stylize(HEALTH_STYLES.get(node["health"], "yellow"))
        table.add_row(*cells)
    return table


def notes(snapshot: dict[str, Any]) -> list[str]:
    """Under the table: why each unhealthy node is so, and what nodes cannot do."""
    nodes = snapshot.get("nodes", [])
    return [*(f"  {n['id']}: {n['detail']}" for n in nodes if n["health"] != "healthy"),
            *(line for n in nodes if (line := _cannot(n)))]


def render(snapshot: dict[str, Any]) -> str:
    """The table as plain text, as wide as its rows (logs, pipes), then the notes."""
    from rich.console import Console

    out = io.StringIO()
    Console(file=out, width=UNWRAPPED, color_system=None).print(node_table(snapshot))
    return "\n".join([*(line.rstrip() for line in out.getvalue().splitlines()),
                      *notes(snapshot)])


def show(snapshot: dict[str, Any]) -> None:
    """Print the table: fitted to a terminal and coloured there, plain text anywhere else."""
    from rich.console import Console

    if not sys.stdout.isatty():
        click.echo(render(snapshot))
        return
    console = Console()
    console.print(node_table(snapshot))
    for line in notes(snapshot):
        console.print(line, markup=False, highlight=False)


def _cannot(node: dict[str, Any]) -> str:
    """What a node serving one model is known not to do (reported or learned), in words."""
    from sollol.core.capabilities import ALL, describe

    known = (node.get("capabilities") or {}).get("")
    gone = set((node.get("lacks") or {}).get("", []))
    if known is not None:
        gone |= set(ALL) - set(known)
    if not gone:
        return ""
    return f"  {node['id']} ({node.get('server') or node.get('kind')}) cannot do " \
           f"{describe(frozenset(gone))}"


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--gateway", metavar="URL",
              help="Ask this gateway (default: gateway_host:gateway_port from the config).")
@click.option("--direct", is_flag=True, help="Probe the nodes now instead of asking a gateway.")
@config_option
@click.pass_context
@handle_errors
def nodes(ctx: click.Context, as_json: bool, gateway: str | None, direct: bool,
          config_file: Path | None) -> None:
    """Pool nodes: kind, health, ejection, requests in flight, loaded models, memory, speed.

    Live numbers come from a running gateway; without one the nodes are probed directly.
    `sollol nodes add|remove ADDR` changes a running gateway's pool.
    """
    if ctx.invoked_subcommand is not None:
        return
    snapshot = None
    source = "direct probe"
    if not direct:
        gateway = gateway_url(config_file, gateway)
        snapshot = _gateway_nodes(gateway)
        source = f"gateway {gateway}"
    if snapshot is None:
        async def grab(route: Any) -> dict[str, Any]:
            return dict(route.snapshot())
        snapshot = _with_route(config_file, grab)
        source = "direct probe" if direct else f"direct probe (no gateway at {gateway})"
    if as_json:
        click.echo(json.dumps({"source": source, **snapshot}, indent=2, default=str))
        return
    click.echo(f"# {source}")
    show(snapshot)


@nodes.command("add")
@click.argument("address")
@gateway_option
@config_option
@handle_errors
def nodes_add(address: str, gateway: str | None, config_file: Path | None) -> None:
    """Add the pool node at ADDRESS to the running gateway (host:port, http://..., openai://...).

    It is probed once, then takes requests. It stays until removed (also through re-discovery
    and config reloads); add it to `ollama_nodes` to keep it after a restart.
    """
    url = gateway_url(config_file, gateway)
    result = call(url, "POST", "/sollol/nodes", {"address": address})
    node = result.get("node") or {}
    if not result.get("added"):
        click.echo(result.get("detail") or f"{address} was already a pool node")
        return
    click.echo(f"added {node.get('id', address)} to {url}: {node.get('health', '?')}"
               f" ({node.get('detail', '')})")


@nodes.command("remove")
@click.argument("address")
@gateway_option
@config_option
@handle_errors
def nodes_remove(address: str, gateway: str | None, config_file: Path | None) -> None:
    """Remove the pool node ADDRESS (id, host:port or URL) from the running gateway.

    It takes no new requests; the ones it is serving finish. Discovery does not bring it
    back until it is added again.
    """
    url = gateway_url(config_file, gateway)
    result = call(url, "DELETE", item("/sollol/nodes", address))
    for entry in result.get("removed", []):
        running = entry.get("draining") or 0
        tail = f"; {running} request(s) in flight finish there" if running else ""
        click.echo(f"removed {entry['id']} from {url}{tail}")


@click.command()
@click.argument("model")
@click.option("--node", "node_names", multiple=True, metavar="NODE",
              help="Pull only on this node (repeatable; default: every healthy Ollama node).")
@click.option("--insecure", is_flag=True, help="Allow an insecure registry.")
@click.option("--gateway", metavar="URL",
              help="Pull through this gateway (default: gateway_host:gateway_port in config).")
@click.option("--direct", is_flag=True,
              help="Talk to the nodes from here even when a gateway runs.")
@config_option
@handle_errors
def pull(model: str, node_names: tuple[str, ...], insecure: bool, gateway: str | None,
         direct: bool, config_file: Path | None) -> None:
    """Pull MODEL onto the pool's Ollama nodes, with a progress bar per node.

    Goes through the running gateway when there is one, so that it knows the new model at
    once; without one, talks to the nodes directly.
    """
    from .pull_progress import PullProgress

    summary: dict[str, Any] | None = None
    with PullProgress(sys.stdout.isatty()) as bars:
        if not direct:
            url = gateway_url(config_file, gateway)
            summary = _pull_through(url, model, node_names, insecure, bars,
                                    required=bool(gateway))

        async def run(route: Any) -> dict[str, Any]:
            last: dict[str, Any] = {}
            async for event in route.pull(model, node_names or None, insecure=insecure):
                if "node" in event:
                    bars.update(event)
                last = event
            return last

        if summary is None:
            summary = _with_route(config_file, run)
    if summary.get("error"):
        raise click.ClickException(f"pull {model}: {summary['error']}")
    click.echo(f"pulled {model} on {len(summary.get('nodes', {}))} node(s)")


def _pull_through(url: str, model: str, node_names: tuple[str, ...], insecure: bool,
                  bars: PullProgress, *, required: bool) -> dict[str, Any] | None:
    """Pull through the gateway at `url`: its last progress event, or None when no gateway
    answers there (and none was named)."""
    import httpx

    body: dict[str, Any] = {"model": model, "stream": True, "insecure": insecure}
    if node_names:
        body["nodes"] = list(node_names)
    last: dict[str, Any] = {}
    try:
        with gateway_client(url, timeout=None) as client, \
                client.stream("POST", "/api/pull", json=body) as reply:
            if reply.status_code != 200:
                reply.read()
                try:
                    error = read_json(reply).get("error")
                except (ValueError, AttributeError):
                    error = None
                if error is None and not required:
                    return None  # something else listens there
                raise click.ClickException(f"pull {model} through {url}: "
                                           f"{error or reply_text(reply)}"
                                           f"{refusal_hint(reply.status_code)}")
            for line in reply.iter_lines():
                if not line.strip():
                    continue
                event = escape_strings(json.loads(line))
                if "node" in event:
                    bars.update(event)
                last = event
    except httpx.ConnectError as exc:
        if required:
            raise click.ClickException(f"no gateway answers at {url} ({exc})") from None
        return None
    except (httpx.HTTPError, ValueError) as exc:
        raise click.ClickException(f"pull {model} through {url}: {exc}") from None
    return last
