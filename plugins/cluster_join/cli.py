"""`sollol cluster ...`: join tokens and members, through the running gateway's admin API."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import click

from sollol.cli import config_option, handle_errors
from sollol.cli.gateway_client import call, gateway_option, gateway_url, item

from .tokens import parse_duration

BASE = "/sollol/cluster"
json_option = click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "never"
    return datetime.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M")


def _print(data: Any, as_json: bool, text: str) -> None:
    click.echo(json.dumps(data, indent=2) if as_json else text)


@click.group("cluster")
def cluster() -> None:
    """Machines that join with `sollol join`: tokens, members, approvals."""


@cluster.group("token")
def token() -> None:
    """Join tokens: create (shown once), list, revoke."""


@token.command("create")
@click.option("--expires", metavar="DURATION", help="Expire after e.g. 30m, 24h, 7d.")
@click.option("--note", default="", help="A note kept with the token (who or what it is for).")
@json_option
@gateway_option
@config_option
@handle_errors
def token_create(expires: str | None, note: str, as_json: bool, gateway: str | None,
                 config_file: Path | None) -> None:
    """Make a join token; it is shown now only (the gateway keeps its hash)."""
    if expires is not None:
        try:
            parse_duration(expires)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--expires") from None
    url = gateway_url(config_file, gateway)
    data = call(url, "POST", f"{BASE}/tokens", {"note": note, "expires": expires})
    if as_json:
        _print(data, True, "")
        return
    click.echo(data["token"])  # alone on stdout: T=$(sollol cluster token create)
    until = f", expires {_when(data.get('expires'))}" if data.get("expires") else ""
    click.echo(f"join token {data['token_id']}{until}; it is shown only now. On each machine:"
               f"\n  sollol join {url} --token {data['token']}", err=True)


@token.command("list")
@json_option
@gateway_option
@config_option
@handle_errors
def token_list(as_json: bool, gateway: str | None, config_file: Path | None) -> None:
    """The join tokens (never their secrets): state, uses, expiry, note."""
    data = call(gateway_url(config_file, gateway), "GET", f"{BASE}/tokens")
    rows = [f"{t['token_id']}  {t['state']:<8} uses {t['uses']:<4} created "
            f"{_when(t['created'])}  expires {_when(t['expires'])}  {t['note']}"
            for t in data["tokens"]]
    _print(data, as_json, "\n".join(rows) or "no join tokens (make one: sollol cluster "
           "token create)")


@token.command("revoke")
@click.argument("token_id")
@gateway_option
@config_option
@handle_errors
def token_revoke(token_id: str, gateway: str | None, config_file: Path | None) -> None:
    """Revoke a join token: it can no longer join anything (members stay)."""
    call(gateway_url(config_file, gateway), "DELETE", item(f"{BASE}/tokens", token_id))
    click.echo(f"join token {token_id} revoked")


def _member_row(m: dict[str, Any]) -> str:
    seen = m.get("seconds_since_heartbeat")
    beat = f"{seen:.0f} s ago" if seen is not None else "-"
    services = ", ".join(m.get("backends") or {}) or "-"
    free = sum(d["memory_free"] for d in m.get("devices") or [])
    memory = f"{free / 2**30:.1f} GiB free" if m.get("devices") else "-"
    return (f"{m['name']:<20} {m['state']:<8} {m['host']}:{m['tunnel_port']:<6} "
            f"heartbeat {beat:<9} {memory:<14} {services}")


@cluster.command("members")
@json_option
@gateway_option
@config_option
@handle_errors
def members(as_json: bool, gateway: str | None, config_file: Path | None) -> None:
    """Joined machines: state, address, last heartbeat, free memory, services."""
    data = call(gateway_url(config_file, gateway), "GET", f"{BASE}/members")
    _print(data, as_json, "\n".join(_member_row(m) for m in data["members"])
           or "no machine has joined (sollol cluster token create, then sollol join)")


@cluster.command("pending")
@json_option
@gateway_option
@config_option
@handle_errors
def pending(as_json: bool, gateway: str | None, config_file: Path | None) -> None:
    """Machines waiting for approval (join_policy = "approve")."""
    data = call(gateway_url(config_file, gateway), "GET", f"{BASE}/pending")
    rows = [f"{m['name']:<20} {m['host']}  token {m['token_id']}  joined {_when(m['joined_at'])}"
            for m in data["pending"]]
    _print(data, as_json, "\n".join(rows) or "no machine is waiting for approval")


@cluster.command("approve")
@click.argument("name")
@gateway_option
@config_option
@handle_errors
def approve(name: str, gateway: str | None, config_file: Path | None) -> None:
    """Let a pending machine in: it gets its certificate on its next poll."""
    call(gateway_url(config_file, gateway), "POST", item(f"{BASE}/approve", name))
    click.echo(f"{name} approved")


@cluster.command("remove")
@click.argument("name")
@gateway_option
@config_option
@handle_errors
def remove(name: str, gateway: str | None, config_file: Path | None) -> None:
    """Remove a member now and revoke its certificate (it must join again with a token)."""
    call(gateway_url(config_file, gateway), "DELETE", item(f"{BASE}/members", name))
    click.echo(f"{name} removed; its certificate is revoked")
