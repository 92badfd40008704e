"""The demo's traffic: requests through a gateway, each with the routing decision it got."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote

import attrs
import httpx

REQUEST_TIMEOUT = 600.0
"""A sharded model's first request includes loading it onto the rpc-servers."""
PROMPTS = (
    "Once upon a time", "The cluster said hello to", "A tiny model walks into a server",
    "Tell me about the moon", "Why is the sky", "The king and the queen",
    "Water and light", "One token at a time",
)


@attrs.frozen
class Reply:
    """One request as the client saw it, with the gateway's `X-Sollol-*` routing headers."""

    model: str
    prompt: str
    status: int
    seconds: float
    route: str = ""
    backend: str = ""
    policy: str = ""
    reason: str = ""
    tokens: int | None = None
    text: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error


async def generate(client: httpx.AsyncClient, model: str, prompt: str, tokens: int) -> Reply:
    """`POST /api/generate` (Ollama's API, not streamed) and what the gateway said about it."""
    body = {"model": model, "prompt": prompt, "stream": False,
            "options": {"num_predict": tokens, "temperature": 0}}
    started = time.perf_counter()
    try:
        response = await client.post("/api/generate", json=body)
    except httpx.HTTPError as exc:
        return Reply(model, prompt, 0, time.perf_counter() - started,
                     error=f"{type(exc).__name__}: {exc}")
    seconds = time.perf_counter() - started
    route = {key: unquote(response.headers.get(f"x-sollol-{key}", ""))
             for key in ("route", "backend", "policy", "reason")}
    try:
        data: Any = response.json()
    except ValueError:
        data = {"error": response.text[:300]}
    if not isinstance(data, dict):
        data = {"error": f"unexpected reply: {str(data)[:300]}"}
    error = str(data.get("error") or "") if response.status_code != 200 else ""
    return Reply(model, prompt, response.status_code, seconds, **route,
                 tokens=data.get("eval_count"), text=str(data.get("response", "")), error=error)


async def run_batch(url: str, model: str, prompts: Sequence[str], tokens: int) -> list[Reply]:
    """Send every prompt at once; the replies come back in prompt order."""
    limits = httpx.Limits(max_connections=len(prompts) + 1)
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT, limits=limits,
                                 trust_env=False) as client:
        return list(await asyncio.gather(*(generate(client, model, p, tokens) for p in prompts)))


def batch(url: str, model: str, prompts: Sequence[str], tokens: int = 16) -> list[Reply]:
    """`run_batch` from synchronous code (Ctrl-C cancels the requests, then propagates)."""
    return asyncio.run(run_batch(url, model, prompts, tokens))


def route_snapshot(url: str, route: str) -> dict[str, Any]:
    """`GET /sollol/routes/<route>`: the route's state as the gateway reports it."""
    response = httpx.get(f"{url}/sollol/routes/{route}", timeout=30.0, trust_env=False)
    response.raise_for_status()
    return response.json()
