"""SOLLOL command plugin `v2-command`: adds `sollol v2-command` to the command line."""

from __future__ import annotations

import json

import click

from sollol.hookspecs import hookimpl


@hookimpl
def sollol_register_commands(cli: click.Group) -> None:
    @cli.command(name="v2-command")
    @click.option("--gateway", default="http://127.0.0.1:11435", show_default=True,
                  help="The running gateway to ask.")
    def command(gateway: str) -> None:
        """List the models a running SOLLOL gateway serves."""
        import httpx

        try:
            reply = httpx.get(gateway.rstrip("/") + "/api/tags", timeout=10, trust_env=False)
            reply.raise_for_status()
        except httpx.HTTPError as exc:
            raise click.ClickException(f"cannot ask the gateway at {gateway}: {exc}") from None
        for model in reply.json().get("models", []):
            click.echo(json.dumps({"name": model.get("name"), "size": model.get("size")}))
