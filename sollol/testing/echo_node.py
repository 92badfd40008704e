"""A scripted node for `HostileNode` that answers health probes like Ollama and llama-server, and
every other request with whatever a test's `answer` makes of it (an error echoing the client's
string or the node's own key, a `/props` naming a local file, ...)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Collection, Mapping
from typing import Any

from sollol.testing.hostile_node import RawRequest, Script, response

Answer = Callable[[RawRequest], tuple[int, Any]]
"""(status, JSON value) for one request that is not a health probe."""


def probe_answers(models: Collection[str], props: Mapping[str, Any] | None = None,
                  ) -> dict[str, Any]:
    """What Ollama's and llama-server's probe paths answer for `models` (`/props`: `props`)."""
    tags = [{"name": m, "model": m, "size": 1000, "digest": "0" * 64, "modified_at":
             "2026-01-01T00:00:00Z", "details": {"format": "gguf", "family": "llama"}}
            for m in models]
    answers: dict[str, Any] = {
        "/api/version": {"version": "0.9.0"}, "/api/tags": {"models": tags},
        "/api/ps": {"models": []}, "/health": {"status": "ok"},
        "/v1/models": {"object": "list", "data": [{"id": m, "object": "model"} for m in models]},
    }
    if props is not None:
        answers["/props"] = dict(props)
    return answers


def echo_script(answer: Answer, models: Collection[str] = ("m",),
                props: Mapping[str, Any] | None = None) -> Script:
    """Probes answered as a healthy node serving `models`; any other request by `answer`."""
    probes = probe_answers(models, props)

    async def script(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        path = request.path.split("?", 1)[0]
        if request.method == "GET" and path in probes:
            status, value = 200, probes[path]
        elif request.method == "GET":
            status, value = 404, {"error": "not found"}
        else:
            status, value = answer(request)
        writer.write(response(json.dumps(value).encode(), status))
        await writer.drain()
        return True

    return script


def authorization(request: RawRequest) -> str:
    """The request's `Authorization` value ("" without one)."""
    for line in request.head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "authorization":
            return value.strip()
    return ""
