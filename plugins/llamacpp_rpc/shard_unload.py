"""`sollol shard unload MODEL`: stop a sharded model's coordinator on the running gateway.

It asks as the `ollama` tool does (`ollama stop`): `POST /api/generate` with `keep_alive: 0` and
no prompt, which the gateway answers without starting anything. The rpc-servers come free for
other models; the next request for the model starts it again, placed afresh.
"""

from __future__ import annotations

from pathlib import Path

import click

from sollol.cli import config_option, handle_errors
from sollol.cli.gateway_client import call, gateway_option, gateway_url


@click.command("unload")
@click.argument("model")
@gateway_option
@config_option
@handle_errors
def unload(model: str, gateway: str | None, config_file: Path | None) -> None:
    """Stop MODEL's coordinator now (requests in flight finish first), freeing its
    rpc-servers; the next request for it loads it again."""
    url = gateway_url(config_file, gateway)
    running = call(url, "GET", "/api/ps").get("models") or []
    sharded = [m for m in running if isinstance(m, dict)
               and _same(m.get("name"), model) and (m.get("details") or {}).get("sharded_over")]
    reply = call(url, "POST", "/api/generate", {"model": model, "keep_alive": 0})
    if reply.get("done_reason") != "unload":
        raise click.ClickException(f"gateway {url} did not unload {model!r}: it answered "
                                   f"{reply!r}")
    if not sharded:
        click.echo(f"{model} was not loaded on the sharding route (nothing to stop)")
        return
    over = ", ".join(sharded[0]["details"]["sharded_over"])
    click.echo(f"unloaded {model}: its coordinator stops once its requests finish, and "
               f"{over} come free")


def _same(name: object, model: str) -> bool:
    return isinstance(name, str) and name.removesuffix(":latest") == model.removesuffix(":latest")
