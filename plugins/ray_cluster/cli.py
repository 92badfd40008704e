"""`sollol ray status`: the gateway's Ray members, through its admin API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from sollol.cli import config_option, handle_errors
from sollol.cli.gateway_client import call, gateway_option, gateway_url

from .endpoints import PATH


@click.group("ray")
def ray() -> None:
    """The rpc-servers and pool models the gateway runs as Ray actors (docs/ray.md)."""


@ray.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@gateway_option
@config_option
@handle_errors
def status(as_json: bool, gateway: str | None, config_file: Path | None) -> None:
    """The Ray cluster's nodes and the gateway's actors on them, with their state."""
    data = call(gateway_url(config_file, gateway), "GET", PATH)
    click.echo(json.dumps(data, indent=2) if as_json else render(data))


def render(data: dict[str, Any]) -> str:
    if not data.get("enabled"):
        return "Ray: off (ray_address is empty)"
    state = "connected" if data.get("connected") else f"not connected ({data.get('error')})"
    alive = [n for n in data.get("nodes", []) if n.get("alive")]
    lines = [f"Ray {data['address']}: {state}; {len(alive)} alive node(s); "
             f"rpc-servers per {data['rpc_per']}"]
    for member in data.get("members", []):
        where = member.get("address") or "-"
        node = (member.get("node_id") or "")[:12]
        lines.append(f"  {member['id']:<28} {member['state']:<9} {where:<22} node {node}")
    for failure in data.get("failures", []):
        lines.append(f"  {failure['id']:<28} failed    retry in {failure['retry_in']} s: "
                     f"{failure['error']}")
    if not data.get("members"):
        lines.append("  (no actors yet)")
    return "\n".join(lines)
