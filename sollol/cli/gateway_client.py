"""Talking to our own running gateway: its address, its key, and its admin endpoints.

Every command that asks a running gateway (`sollol status`, `sollol nodes add`, `sollol rpc
remove`, ...) finds it with `gateway_url` and talks to it through `gateway_client`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import click

from sollol.cli.common import load_for_cli
from sollol.cli.credentials import cli_key, describe
from sollol.core.access import gateway_headers
from sollol.core.logtext import escape_strings, terminal_text
from sollol.models import join_host_port

if TYPE_CHECKING:
    import httpx

    from sollol.config import Config

__all__ = [
    "call",
    "gateway_address",
    "gateway_client",
    "gateway_headers",
    "gateway_option",
    "gateway_url",
    "item",
    "read_json",
    "refusal_hint",
    "reply_text",
]

WILDCARDS = ("0.0.0.0", "::", "")
"""Bind addresses that mean "every interface": this machine asks them on loopback."""


def gateway_address(config: Config) -> str:
    """`http://host:port` of the gateway the config describes (IPv6 hosts in brackets)."""
    host = str(config["gateway_host"]).strip("[]")
    host = "127.0.0.1" if host in WILDCARDS else host
    return "http://" + join_host_port(host, int(config["gateway_port"]))


def gateway_url(config_file: Path | None, url: str | None = None) -> str:
    """The gateway to ask: `url`, else gateway_host:gateway_port from the config."""
    if url:
        return url.rstrip("/")
    config, _pm = load_for_cli(config_file)
    return gateway_address(config)


def gateway_client(url: str, *, timeout: float | None = 60.0,
                   transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """An httpx.Client for our own gateway at `url`: paths are relative to it, requests carry
    the CLI's key ($SOLLOL_KEY, else the saved one: `sollol.cli.credentials`) and the header
    that tells the gateway no web page sent them (requests that change the cluster need it or a
    JSON body), and no proxy from the environment ever answers for it (`trust_env=False`)."""
    import httpx

    sent = cli_key()
    headers = {**gateway_headers(sent and sent.key), "X-Requested-With": "sollol"}
    return httpx.Client(base_url=url.rstrip("/"), headers=headers,
                        timeout=timeout, trust_env=False, transport=transport)


def read_json(reply: httpx.Response) -> Any:
    """The reply's JSON with every string in it escaped for a terminal (ValueError when it is
    not JSON). Node ids, model names, errors and devices come from machines the user does not
    control: an ANSI escape in one must not drive the user's terminal. Every command that shows
    what a gateway sent reads it through here (tests/cli/test_hostile_gateway.py)."""
    return escape_strings(reply.json())


def reply_text(reply: httpx.Response, limit: int = 200) -> str:
    """The start of a reply's body, for an error message, escaped for a terminal."""
    return terminal_text(reply.text[:limit])


def refusal_hint(status: int) -> str:
    """` (which key was sent, and the fix)` for a 401/403 reply; empty for any other status."""
    return f" ({describe(status)})" if status in (401, 403) else ""


def call(url: str, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One admin request; a missing gateway or an error reply is a one-line CLI error."""
    import httpx

    try:
        with gateway_client(url) as client:
            reply = client.request(method, path, json=body)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"no gateway answers at {url} ({exc}); start one with "
                                   "`sollol run` or name it with --gateway") from None
    try:
        data = read_json(reply)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise click.ClickException(f"{url} answered {method} {path} with HTTP "
                                   f"{reply.status_code}, not a SOLLOL gateway's JSON")
    if reply.status_code >= 400:
        error = data.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        raise click.ClickException(f"gateway {url}: {message or reply_text(reply)}"
                                   f"{refusal_hint(reply.status_code)}")
    return data


def item(collection: str, ident: str) -> str:
    """`/sollol/nodes/<ident>`, with the id escaped for a URL path ([::1]:11434 included)."""
    return f"{collection}/{quote(ident, safe='')}"


gateway_option = click.option(
    "--gateway", metavar="URL",
    help="The running gateway (default: gateway_host:gateway_port from the config).")
