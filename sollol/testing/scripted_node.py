"""A tiny scripted LLM server (OpenAI-compatible or Ollama dialect) on its own thread.

It answers with fixed words, can pause after the first streamed chunk, and records every request
body it receives, so tests can check streaming timing and that fields arrive untouched.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import attrs
from aiohttp import web

from sollol.models import Api


@attrs.define
class ScriptedNode:
    """Serve `words` for any model; `pause_after_first` seconds between chunk 1 and chunk 2."""

    api: Api = "openai"
    words: tuple[str, ...] = ("Hello", " from", " a", " scripted", " node")
    pause_after_first: float = 0.0
    embeddings: bool = True
    """False: answer embedding requests as llama-server without `--embeddings` does (501)."""
    models: tuple[str, ...] = ("scripted",)
    """What `GET /v1/models` lists (so a pool can use it as an OpenAI-compatible node)."""
    host: str = "127.0.0.1"
    port: int = 0
    authorization: str | None = None
    """When set, every request must carry exactly this `Authorization` value, else 401 (as vLLM
    and LiteLLM do with an API key, health and model list included)."""
    prefix: str = ""
    """A base path every endpoint lives under (a server behind a path-routing proxy)."""
    requests: list[dict[str, Any]] = attrs.field(factory=list)
    refused: list[str] = attrs.field(factory=list)
    """Paths of requests refused for a missing or wrong `Authorization` or outside `prefix`."""
    disconnects: int = 0
    """Streams the client cut before the end (seen when the next write fails)."""
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ScriptedNode:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True,
                                        name="scripted-node")
        self._thread.start()
        if not ready.wait(30):
            raise TimeoutError("scripted node did not start")
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> ScriptedNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        app = web.Application(middlewares=[self._gate])
        at = self.prefix
        if self.api == "openai":
            app.router.add_post(at + "/v1/chat/completions", self._openai)
            app.router.add_post(at + "/v1/completions", self._openai)
            app.router.add_post(at + "/v1/embeddings", self._embeddings)
            app.router.add_get(at + "/v1/models", self._models)
        else:
            app.router.add_post(at + "/api/chat", self._ollama)
            app.router.add_post(at + "/api/generate", self._ollama)
        # handler_cancellation: a client that leaves during a pause ends the handler at once
        # (as it does Ollama's and llama-server's generation), instead of at the next write.
        self._runner = web.AppRunner(app, handle_signals=False, handler_cancellation=True)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, self.host, self.port)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        ready.set()
        self._loop.run_forever()
        self._loop.close()

    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        wrong_key = (self.authorization is not None
                     and request.headers.get("Authorization") != self.authorization)
        if wrong_key or not request.path.startswith(self.prefix + "/"):
            self.refused.append(request.path)
            status = 401 if wrong_key else 404
            return web.json_response({"error": {"message": "unauthorized" if wrong_key
                                                else "not found", "code": status}},
                                     status=status)
        return await handler(request)

    async def _body(self, request: web.Request) -> dict[str, Any]:
        body = await request.json()
        self.requests.append({"path": request.path, "body": body})
        return body

    async def _stream(self, request: web.Request, content_type: str,
                      pieces: list[bytes]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        try:
            for index, piece in enumerate(pieces):
                await response.write(piece)
                if index == 0 and self.pause_after_first:
                    await asyncio.sleep(self.pause_after_first)
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            self.disconnects += 1
            raise
        return response

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        chat = request.path.endswith("/chat/completions")
        usage = {"prompt_tokens": 3, "completion_tokens": len(self.words),
                 "total_tokens": 3 + len(self.words)}
        base = {"id": "x-1", "created": int(time.time()), "model": body.get("model")}
        if not body.get("stream"):
            text = "".join(self.words)
            choice = ({"index": 0, "message": {"role": "assistant", "content": text},
                       "finish_reason": "stop"} if chat else
                      {"index": 0, "text": text, "finish_reason": "stop"})
            kind = "chat.completion" if chat else "text_completion"
            return web.json_response({**base, "object": kind, "choices": [choice],
                                      "usage": usage})
        kind = "chat.completion.chunk" if chat else "text_completion"
        pieces = []
        for word in self.words:
            choice = ({"index": 0, "delta": {"content": word}, "finish_reason": None} if chat
                      else {"index": 0, "text": word, "finish_reason": None})
            pieces.append({**base, "object": kind, "choices": [choice]})
        last = {"index": 0, "delta": {}, "finish_reason": "stop"} if chat else \
            {"index": 0, "text": "", "finish_reason": "stop"}
        pieces.append({**base, "object": kind, "choices": [last]})
        if (body.get("stream_options") or {}).get("include_usage"):
            pieces.append({**base, "object": kind, "choices": [], "usage": usage})
        data = [b"data: " + json.dumps(p).encode() + b"\n\n" for p in pieces]
        return await self._stream(request, "text/event-stream", [*data, b"data: [DONE]\n\n"])

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "owned_by": "scripted"} for m in self.models]})

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if not self.embeddings:
            error = {"code": 501, "type": "not_supported_error",
                     "message": "This server does not support embeddings. Start it with "
                                "`--embeddings`"}
            return web.json_response({"error": error}, status=501)
        inputs = body.get("input")
        inputs = inputs if isinstance(inputs, list) else [inputs]
        data = [{"object": "embedding", "index": i, "embedding": [0.5, -0.5, float(len(str(t)))]}
                for i, t in enumerate(inputs)]
        return web.json_response({"object": "list", "data": data, "model": body.get("model"),
                                  "usage": {"prompt_tokens": 2, "total_tokens": 2}})

    async def _ollama(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        chat = request.path == "/api/chat"
        stats = {"total_duration": 1000, "load_duration": 0, "prompt_eval_count": 3,
                 "prompt_eval_duration": 10, "eval_count": len(self.words),
                 "eval_duration": 100}

        def piece(text: str, done: bool) -> dict[str, Any]:
            out: dict[str, Any] = {"model": body.get("model"), "created_at": "2026-01-01T00:00:00Z"}
            if chat:
                out["message"] = {"role": "assistant", "content": text}
            else:
                out["response"] = text
            out["done"] = done
            return {**out, "done_reason": "stop", **stats} if done else out

        if body.get("stream") is False:
            return web.json_response(piece("".join(self.words), True))
        lines = [piece(w, False) for w in self.words] + [piece("", True)]
        return await self._stream(request, "application/x-ndjson",
                                  [json.dumps(line).encode() + b"\n" for line in lines])
