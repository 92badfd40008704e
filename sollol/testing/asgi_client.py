"""The gateway's ASGI app driven in-process from synchronous tests: no socket, no uvicorn.

Thousands of generated requests a minute: the app runs on a private event loop thread and
httpx's ASGI transport calls it directly. Records every log record that carries a traceback,
so a test can assert that no input made the gateway log one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import attrs
import httpx

from sollol.client.loop_thread import LoopThread
from sollol.core.runtime import ClusterRuntime
from sollol.gateway.app import Gateway

OLLAMA_MODELS = ("llama3.2:1b", "qwen2:0.5b")
OPENAI_MODEL = "gpt-scripted"
"""The models of the `asgi_pool` test fixture's two nodes (an Ollama one, an OpenAI one)."""
REQUEST_TIMEOUT = 120.0
"""Seconds one request may take before it counts as a hang (a client's timeout, not a limit on
the test: a healthy gateway answers these in milliseconds)."""


class _Tracebacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[0] is not None:
            self.records.append(record)


@attrs.define
class AsgiGateway:
    """A started `Gateway` on its own loop thread, with an httpx client calling it in-process."""

    gateway: Gateway
    loop: LoopThread
    client: httpx.AsyncClient
    _handler: _Tracebacks

    @classmethod
    def start(cls, **config: Any) -> AsgiGateway:
        """A gateway over `ClusterRuntime.from_config(overrides=config)` (installed plugins)."""
        loop = LoopThread("asgi-gateway")
        gateway = Gateway(ClusterRuntime.from_config(overrides=config))
        handler = _Tracebacks()
        for name in ("sollol", "uvicorn", "asyncio"):
            logging.getLogger(name).addHandler(handler)
        try:
            loop.run(gateway.startup())
            client = loop.run(_client(gateway))
        except BaseException:
            _detach(handler)
            loop.stop()
            raise
        return cls(gateway, loop, client, handler)

    @property
    def errors(self) -> list[logging.LogRecord]:
        return self._handler.records

    def wait_healthy(self, count: int, timeout: float = 60.0) -> None:
        """Wait until the pool route reports `count` healthy backends."""
        deadline = time.monotonic() + timeout
        while True:
            route = self.gateway.cluster.routes.get("pool")
            if route is not None and len(route.state().healthy) >= count:
                return
            if time.monotonic() > deadline:
                state = route.state() if route is not None else None
                raise TimeoutError(f"pool not healthy after {timeout:.0f}s: {state}")
            time.sleep(0.05)

    def request(self, method: str, path: str, body: bytes | None = None, query: str = "",
                headers: dict[str, str] | None = None) -> httpx.Response:
        """One request, labelled JSON as Ollama's and OpenAI's clients label every request
        (`headers` may say otherwise); the reply body is read whole (streams too)."""
        url = path + (f"?{query}" if query else "")
        headers = {"Content-Type": "application/json", **(headers or {})}

        async def send() -> httpx.Response:
            request = self.client.build_request(method, url, content=body, headers=headers)
            return await asyncio.wait_for(self.client.send(request), REQUEST_TIMEOUT)

        return self.loop.run(send())

    def stop(self) -> None:
        try:
            self.loop.run(self.client.aclose())
            self.loop.run(self.gateway.shutdown())
        finally:
            _detach(self._handler)
            self.loop.stop()


async def _client(gateway: Gateway) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=gateway)  # app exceptions propagate to the caller
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:11435")


def _detach(handler: logging.Handler) -> None:
    for name in ("sollol", "uvicorn", "asyncio"):
        logging.getLogger(name).removeHandler(handler)
