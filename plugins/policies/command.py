"""`sollol route MODEL`: which route would serve a model now, and why, with the numbers."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from sollol.cli import UsageFailure
from sollol.core.units import format_bytes
from sollol.errors import (
    ConfigError,
    NoRouteAvailable,
    NotSupported,
    Overloaded,
    PluginError,
    RequestError,
    SollolError,
)

if TYPE_CHECKING:
    import httpx


class GatewayRefused(SollolError):
    """The gateway answered 401/403: it is there, so deciding here instead would mislead."""


@click.command("route")
@click.argument("model")
@click.option("--ctx", "context", type=click.IntRange(min=1), default=None,
              help="Context length to plan for (default: the policy's default_context).")
@click.option("--endpoint", type=click.Choice(["chat", "generate", "embed"]), default="chat",
              help="What the request asks for (routes lacking it are ruled out).")
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON.")
@click.option("--gateway", metavar="URL", default=None,
              help="Ask this gateway (default: gateway_host:gateway_port from the config).")
@click.option("--direct", is_flag=True,
              help="Start the routes here and decide, instead of asking a running gateway.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Config file to use instead of the default (also SOLLOL_CONFIG).")
def route_command(
    model: str, context: int | None, endpoint: str, as_json: bool, gateway: str | None,
    direct: bool, config_file: Path | None,
) -> None:
    """Explain which routes could serve MODEL, which one would now, and why.

    Asks the running gateway (what it would really do); with no gateway answering, or with
    --direct, starts the routes here (they probe their backends), decides and stops.
    """
    import asyncio

    try:
        answer: dict[str, Any] | None = None
        if gateway:
            answer = ask_gateway(gateway, model, context, endpoint=endpoint)
            source = f"gateway {gateway}"
        elif not direct:
            url = _default_gateway(config_file)
            try:
                answer = ask_gateway(url, model, context, endpoint=endpoint, probe=True)
                source = f"gateway {url}"
            except GatewayRefused:
                raise
            except SollolError:
                source = f"decided here (no gateway answers at {url})"
        else:
            source = "decided here (--direct)"
        if answer is None:
            try:
                answer = asyncio.run(decide_here(model, context, endpoint, config_file))
            except (NoRouteAvailable, RequestError, NotSupported, Overloaded) as exc:
                answer = {"error": str(exc), "status": exc.status,
                          "numbers": getattr(exc, "numbers", {})}
    except (ConfigError, PluginError) as exc:
        raise UsageFailure(str(exc)) from None
    except SollolError as exc:
        raise click.ClickException(str(exc)) from None
    answer["source"] = source
    if as_json:
        click.echo(json.dumps(answer, indent=2, default=str))
    else:
        click.echo(render(model, answer))
    if "error" in answer:
        raise SystemExit(1)


def _default_gateway(config_file: Path | None) -> str:
    from sollol.cli.gateway_client import gateway_url

    return gateway_url(config_file)


async def decide_here(model: str, context: int | None, endpoint: str,
                      config_file: Path | None) -> dict[str, Any]:
    """Start a cluster from config (routes probe their backends), explain, stop."""
    from sollol.core.runtime import ClusterRuntime

    cluster = ClusterRuntime.from_config(path=config_file)
    async with cluster:
        return await cluster.explain(model, endpoint=endpoint, context_length=context)


def ask_gateway(
    url: str, model: str, context: int | None, transport: httpx.BaseTransport | None = None,
    *, endpoint: str = "chat", probe: bool = False,
) -> dict[str, Any]:
    """The decision from a running gateway's `GET /sollol/route` (200 or 4xx/5xx, JSON).

    `probe`: the gateway is only presumed (the config's address): wait briefly.
    """
    import httpx

    from sollol.cli.gateway_client import gateway_client, read_json

    params: dict[str, Any] = {"model": model}
    if context is not None:
        params["ctx"] = context
    if endpoint != "chat":
        params["endpoint"] = endpoint
    try:
        with gateway_client(url, timeout=2.0 if probe else 30.0, transport=transport) as client:
            response = client.get("/sollol/route", params=params)
    except httpx.HTTPError as exc:
        raise SollolError(f"cannot reach the gateway at {url}: {exc}") from None
    try:
        body = read_json(response)
    except ValueError:
        body = None
    if response.status_code in (401, 403):
        from sollol.cli.gateway_client import refusal_hint

        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else error
        raise GatewayRefused(f"the gateway at {url} refused: {message or response.status_code}"
                          f"{refusal_hint(response.status_code)}")
    if not isinstance(body, dict):
        text = response.text[:200]
        raise SollolError(f"the gateway at {url} answered {response.status_code}: {text}")
    if response.status_code != 200 and "error" not in body:
        body = {"error": f"HTTP {response.status_code}", **body}
    if "error" in body:
        body.setdefault("status", response.status_code)
    return body


def render(model: str, answer: Mapping[str, Any]) -> str:
    """A decision (or a 503) as lines a person reads: the verdict, the reason, the numbers."""
    if "error" in answer:
        lines = [f"{model}: no route ({answer.get('status', 503)})", f"  {answer['error']}"]
    else:
        backend = f" (backend {answer['backend']})" if answer.get("backend") else ""
        served = f"{model} (fallback {answer['fallback']})" if answer.get("fallback") else model
        lines = [f"{served} -> {answer['route']}{backend}, by policy {answer['policy']}",
                 f"  {answer['reason']}"]
    if answer.get("tried"):
        lines.append("  tried first (as a request would):")
        lines.extend(f"    {t['model']}: {t.get('status')}: {t['error']}" for t in answer["tried"])
    placement = answer.get("placement") or {}
    if placement:
        lines.append("  routes:")
        for name, place in placement.items():
            missing = f" (missing {', '.join(place['missing'])})" if place.get("missing") else ""
            lines.append(f"    {name}: {place.get('verdict')}{missing}: {place.get('why')}")
    numbers = answer.get("numbers") or {}
    if numbers:
        lines.append("  numbers:")
        lines.extend(_number_lines(numbers, "    "))
    if answer.get("source"):
        lines.append(f"  ({answer['source']})")
    return "\n".join(lines)


def _number_lines(numbers: Mapping[str, Any], indent: str) -> list[str]:
    lines = []
    for key, value in numbers.items():
        if isinstance(value, Mapping):
            lines.append(f"{indent}{key}:" + ("" if value else " {}"))
            lines.extend(_number_lines(value, indent + "  "))
        elif key.endswith("_bytes") and isinstance(value, int):
            lines.append(f"{indent}{key}: {value} ({format_bytes(value)})")
        else:
            lines.append(f"{indent}{key}: {json.dumps(value, default=str)}")
    return lines
