"""The gateway's side of LAN discovery: announce the gateway, watch for announcing workers.

Runs only when the gateway serves beyond loopback and `cluster_announce` is on; both the
announcement and the browser run on zeroconf's own thread, so a LAN full of mDNS traffic never
reaches the gateway's event loop. `GET /sollol/cluster/discovered` (admin) and `sollol cluster
discovered` list the announcing machines that are not members.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import click

from sollol.cli import config_option, handle_errors
from sollol.cli.gateway_client import call, gateway_option, gateway_url
from sollol.models import GatewayEndpoint, HttpReply, HttpRequest

if TYPE_CHECKING:
    import asyncio  # imported where used: `sollol --help` must not load asyncio (startup test)

    from sollol.config import Config

    from .lan import Announcer, WorkerBrowser

log = logging.getLogger("sollol.cluster.lan")

DISCOVERED_PATH = "/sollol/cluster/discovered"


@attrs.define
class GatewayLan:
    """The announcement and the worker browser of one gateway, from `start()` to `stop()`."""

    host: str
    port: int
    pin: str
    announcer: Announcer | None = None
    browser: WorkerBrowser | None = None
    _starting: asyncio.Future[GatewayLan] | None = None

    @classmethod
    def for_config(cls, config: Config, pin: str) -> GatewayLan | None:
        """None when announcing is off or the gateway is bound to loopback only."""
        from .lan import lan_addresses  # zeroconf is imported only where it is used

        host = str(config["gateway_host"]).strip("[]")
        if not config["cluster_announce"] or not lan_addresses(host):
            return None
        return cls(host=host, port=int(config["gateway_port"]), pin=pin)

    def start(self) -> GatewayLan:
        """Blocking (the mDNS conflict probe takes about a second): run it in a thread. A
        failure (no multicast on this network) is logged, never fatal to the gateway."""
        from .lan import WorkerBrowser, announce_gateway, lan_addresses

        try:
            self.browser = WorkerBrowser(lan_addresses(self.host)).start()
            self.announcer = announce_gateway(self.host, self.port, self.pin)
        except OSError as exc:
            log.warning("LAN discovery is off: %s (set cluster_announce = false to silence "
                        "this)", exc)
            self.stop()
        return self

    def begin(self) -> None:
        """Start in a worker thread, from the gateway's event loop, without waiting."""
        import asyncio

        self._starting = asyncio.get_running_loop().run_in_executor(None, self.start)

    def stop(self) -> None:
        announcer, browser, self.announcer, self.browser = self.announcer, self.browser, None, None
        for part in (announcer, browser):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.stop()

    async def stop_async(self) -> None:
        """Wait for a start still under way, then stop (goodbye sent) in a worker thread."""
        if self._starting is not None:
            with contextlib.suppress(Exception):
                await self._starting
        import asyncio

        await asyncio.to_thread(self.stop)

    def discovered(self, members: Iterable[str]) -> list[dict[str, Any]]:
        """The announcing workers whose names are not among `members`, as JSON rows."""
        if self.browser is None:
            return []
        return [w.as_json() for w in self.browser.workers(exclude=members)]


def discovered_reply(lan: GatewayLan | None, members: Iterable[str]) -> dict[str, Any]:
    """The body of `GET /sollol/cluster/discovered`."""
    return {"announcing": lan is not None and lan.browser is not None,
            "discovered": [] if lan is None else lan.discovered(members)}


def lan_endpoints(lan: Callable[[], GatewayLan | None],
                  members: Callable[[], Iterable[str]]) -> list[GatewayEndpoint]:
    """`GET /sollol/cluster/discovered` (admin: not public, so the gateway's guard asks for an
    admin key like every /sollol/ path)."""

    async def discovered(request: HttpRequest) -> HttpReply:
        return HttpReply(200, discovered_reply(lan(), members()))

    return [GatewayEndpoint(DISCOVERED_PATH, ("GET",), discovered)]


@click.command("discovered")
@gateway_option
@click.option("--json", "as_json", is_flag=True, help="Print the gateway's JSON answer.")
@config_option
@handle_errors
def discovered(gateway: str | None, as_json: bool, config_file: Path | None) -> None:
    """Machines announcing themselves on the LAN (`sollol join` running) that are not members.

    Join one with `sollol join --token T` on it (`sollol cluster token create` makes T).
    """
    import json

    data = call(gateway_url(config_file, gateway), "GET", DISCOVERED_PATH)
    if as_json:
        click.echo(json.dumps(data, indent=1))
        return
    rows = data.get("discovered") or []
    if not data.get("announcing"):
        click.echo("LAN discovery is off on this gateway (cluster_announce = false, or it "
                   "listens on loopback only)")
        return
    if not rows:
        click.echo("no machine announces itself that is not a member")
        return
    for row in rows:
        click.echo(f"{row['name']:<24} {row['address']}:{row['port']:<6} "
                   f"sollol {row['version'] or '?'}")
