"""Talking to a running gateway's admin endpoints (`sollol nodes add`, `sollol rpc remove`, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from sollol.cli import load_for_cli
from sollol.core.access import KEY_ENV, gateway_headers

__all__ = ["KEY_HINT", "call", "gateway_headers", "gateway_option", "gateway_url", "item"]


def gateway_url(config_file: Path | None, url: str | None = None) -> str:
    """The gateway to ask: `url`, else gateway_host:gateway_port from the config."""
    if url:
        return url.rstrip("/")
    config, _pm = load_for_cli(config_file)
    host = config["gateway_host"]
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{host}:{config['gateway_port']}"


KEY_HINT = f"set {KEY_ENV} to an admin key (`sollol keys create NAME --admin`)"


def call(url: str, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One admin request; a missing gateway or an error reply is a one-line CLI error."""
    import httpx

    try:  # our own gateway: never through $http_proxy
        reply = httpx.request(method, url + path, json=body, timeout=60.0, trust_env=False,
                              headers=gateway_headers())
    except httpx.HTTPError as exc:
        raise click.ClickException(f"no gateway answers at {url} ({exc}); start one with "
                                   "`sollol run` or name it with --gateway") from None
    try:
        data = reply.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise click.ClickException(f"{url} answered {method} {path} with HTTP "
                                   f"{reply.status_code}, not a SOLLOL gateway's JSON")
    if reply.status_code >= 400:
        error = data.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        hint = f" ({KEY_HINT})" if reply.status_code in (401, 403) else ""
        raise click.ClickException(f"gateway {url}: {message or reply.text}{hint}")
    return data


def item(collection: str, ident: str) -> str:
    """`/sollol/nodes/<ident>`, with the id escaped for a URL path ([::1]:11434 included)."""
    return f"{collection}/{quote(ident, safe='')}"


gateway_option = click.option(
    "--gateway", metavar="URL",
    help="The running gateway (default: gateway_host:gateway_port from the config).")
