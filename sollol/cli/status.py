"""`sollol status`: a running gateway's nodes, rpc-servers, coordinators and requests."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from sollol.cli.common import config_option, handle_errors
from sollol.cli.gateway_client import gateway_client, gateway_url, read_json, refusal_hint


class NoGateway(click.ClickException):
    """Nothing (or not a SOLLOL gateway) answers at the address."""


def fetch(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """The gateway's `/sollol/overview`; NoGateway with the reason when it cannot be read."""
    import httpx  # here, not at the top: `sollol --help` must not pay for it

    try:
        with gateway_client(url, timeout=timeout) as client:
            reply = client.get("/sollol/overview")
    except httpx.HTTPError as exc:
        msg = (f"no gateway answers at {url} ({type(exc).__name__}); start one with "
               "`sollol run`, or name it with --gateway URL")
        raise NoGateway(msg) from None
    try:
        data = read_json(reply)
    except ValueError:
        raise NoGateway(f"{url} answered, but it is not a SOLLOL gateway "
                        f"(HTTP {reply.status_code}, not JSON)") from None
    if reply.status_code != 200 or not isinstance(data, dict):
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            error = error.get("message")
        raise NoGateway(f"{url}/sollol/overview: HTTP {reply.status_code}: "
                        f"{error or 'not a SOLLOL gateway'}{refusal_hint(reply.status_code)}")
    return data


def status_url(gateway: str | None, config_file: Path | None) -> str:
    """`--gateway` (a bare host:port gets http://), else the config's gateway address."""
    if gateway and "://" not in gateway:
        gateway = f"http://{gateway}"
    return gateway_url(config_file, gateway)


@click.command()
@click.option("--json", "as_json", is_flag=True,
              help="Print the overview as JSON (with --watch: one JSON object per line).")
@click.option("--watch", is_flag=True, help="Keep refreshing until Ctrl-C.")
@click.option("--interval", type=click.FloatRange(min=0.2), default=2.0, show_default=True,
              help="Seconds between refreshes with --watch.")
@click.option("--count", type=click.IntRange(min=1), default=None,
              help="With --watch: stop after this many refreshes.")
@click.option("--gateway", metavar="URL",
              help="The gateway to ask (default: gateway_host:gateway_port from the config).")
@config_option
@handle_errors
def status(as_json: bool, watch: bool, interval: float, count: int | None, gateway: str | None,
           config_file: Path | None) -> None:
    """Show a running gateway: nodes, rpc-servers, coordinators and recent requests."""
    url = status_url(gateway, config_file)
    if not watch:
        data = fetch(url)
        if as_json:
            click.echo(json.dumps(data, indent=2, default=str))
        else:
            _print(data, url)
        return
    try:
        if as_json:
            _watch_json(url, interval, count)
        else:
            _watch_live(url, interval, count)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a watch ends


def _print(data: dict[str, Any], url: str) -> None:
    from rich.console import Console

    from sollol.observe.terminal import render

    Console().print(render(data, url))


def _watch_json(url: str, interval: float, count: int | None) -> None:
    shown = 0
    while count is None or shown < count:
        try:
            line: dict[str, Any] = fetch(url)
        except NoGateway as exc:  # the gateway may be restarting: say so and keep trying
            line = {"error": exc.message, "time": time.time()}
        click.echo(json.dumps(line, default=str))
        shown += 1
        if count is None or shown < count:
            time.sleep(interval)


def _watch_live(url: str, interval: float, count: int | None) -> None:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    from sollol.observe.terminal import render

    def frame() -> Any:
        try:
            return render(fetch(url), url)
        except NoGateway as exc:
            return Text(f"{exc.message}\n(retrying every {interval:g} s; Ctrl-C to stop)",
                        style="red")

    shown = 0
    with Live(frame(), console=Console(), refresh_per_second=4, screen=False) as live:
        shown += 1
        while count is None or shown < count:
            time.sleep(interval)
            live.update(frame())
            shown += 1
