"""The emulator's ASGI application: routing, faults, model management and the control API."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs

from sollol.testing import emulator_inference as inference
from sollol.testing.emulator_http import (
    Call,
    ClientGone,
    DroppedConnection,
    HttpError,
    Receive,
    Scope,
    Send,
)
from sollol.testing.emulator_models import EmulatedModel, ModelStore, full_name
from sollol.testing.emulator_state import Faults, Speed, Stats

Handler = Callable[[Call], Awaitable[None]]
_DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")


@attrs.define
class EmulatorApp:
    """An Ollama-compatible HTTP API over a `ModelStore`, with injectable faults."""

    name: str
    store: ModelStore
    speed: Speed = attrs.field(factory=Speed)
    faults: Faults = attrs.field(factory=Faults)
    version: str = "0.33.0"
    library: frozenset[str] | None = None
    """Names `/api/pull` may fetch (None: any name)."""
    pull_seconds: float = 0.2
    on_refuse: Callable[[float | None], Awaitable[None]] | None = None
    request_log: str | None = None
    """A file that gets one line per generation started (`path<TAB>prompt as JSON`): it survives
    a killed node, so fault tests can count how often each request ran."""
    stats: Stats = attrs.field(factory=Stats)
    load_locks: dict[str, asyncio.Lock] = attrs.field(factory=dict)
    _errors_left: int | None = None
    _semaphore: asyncio.Semaphore | None = None
    _routes: dict[tuple[str, str], Handler] = attrs.field(factory=dict)
    _name_bytes: bytes = b""

    def __attrs_post_init__(self) -> None:
        self._name_bytes = self.name.encode()
        r = self._routes
        r["GET", "/"] = r["HEAD", "/"] = self._root
        r["GET", "/api/version"] = self._version
        r["GET", "/api/tags"] = r["HEAD", "/api/tags"] = self._tags
        r["GET", "/api/status"] = self._status
        r["GET", "/v1/models"] = self._openai_models
        r["GET", "/api/ps"] = self._ps
        r["POST", "/api/show"] = self._show
        r["POST", "/api/generate"] = self._generate
        r["POST", "/api/chat"] = self._chat
        r["POST", "/api/embed"] = self._embed
        r["POST", "/api/embeddings"] = self._embeddings
        r["POST", "/api/pull"] = self._pull
        r["POST", "/api/push"] = self._push
        r["DELETE", "/api/delete"] = self._delete
        r["POST", "/api/copy"] = self._copy
        r["POST", "/api/create"] = self._create
        r["GET", "/_emulator/stats"] = self._get_stats
        r["POST", "/_emulator/faults"] = self._set_faults
        r["GET", "/_emulator/faults"] = self._get_faults

    def log_request(self, path: str, prompt: str) -> None:
        """Append to `request_log`, if set (line-buffered: a SIGKILL loses nothing written)."""
        if self.request_log is not None:
            with open(self.request_log, "a", encoding="utf-8") as log:
                log.write(f"{path}\t{json.dumps(prompt)}\n")

    def set_faults(self, faults: Faults) -> None:
        self.faults = faults
        self._errors_left = faults.error_count

    @contextlib.asynccontextmanager
    async def slots(self) -> AsyncIterator[None]:
        """One of the node's `parallel` generation slots (waits in line when all are busy)."""
        if self.speed.parallel <= 0:
            yield
            return
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.speed.parallel)
        async with self._semaphore:
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return
        call = Call(scope, receive, send, self._name_bytes)
        path = scope["path"]
        handler = self._routes.get((scope["method"], path))
        self.stats.enter(path)
        try:
            if handler is None and path.startswith("/api/blobs/"):
                await blob_route(self, call)
                return
            if handler is None and path.startswith("/v1/models/") and call.method == "GET":
                await self._openai_model(call)
                return
            if handler is None:
                known = any(p == path for _, p in self._routes)
                status = 405 if known else 404
                await call.text("405 method not allowed" if known else "404 page not found",
                                status)
                return
            if not path.startswith("/_emulator") and await self._inject(call):
                return
            await handler(call)
        except HttpError as exc:
            if call.started:
                if call.streaming:
                    await call.line({"error": exc.message})
                    await call.end_stream()
                return
            await call.error(exc.status, exc.message)
        except DroppedConnection:
            if call.started:
                raise  # uvicorn closes the connection mid-response: the injected drop
        except ClientGone:
            self.stats.injected["client_gone"] += 1  # nobody is reading: stop, as Ollama does
        finally:
            call.stop_watching()
            self.stats.leave()

    async def _inject(self, call: Call) -> bool:
        """Apply error and hang faults; True when the request was answered (or abandoned)."""
        faults = self.faults
        if not faults.hits(call.path):
            return False
        if faults.hang:
            self.stats.injected["hang"] += 1
            await call.wait_disconnect()
            return True
        if faults.error_status is not None and (self._errors_left is None
                                                or self._errors_left > 0):
            if self._errors_left is not None:
                self._errors_left -= 1
            self.stats.injected[f"status_{faults.error_status}"] += 1
            await call.error(faults.error_status, f"emulated failure ({faults.error_status})")
            return True
        return False

    async def _root(self, call: Call) -> None:
        await call.text("Ollama is running")

    async def _version(self, call: Call) -> None:
        await call.json_reply({"version": self.version})

    async def _tags(self, call: Call) -> None:
        await call.json_reply({"models": self.store.tags()})

    async def _status(self, call: Call) -> None:
        await call.json_reply({"status": "ok", "version": self.version,
                               "models_loaded": len(self.store.running())})

    async def _openai_models(self, call: Call) -> None:
        await call.json_reply({"object": "list", "data": [
            _openai_model(s.model.name, s.modified_at) for s in self.store.slots.values()]})

    async def _openai_model(self, call: Call) -> None:
        """`GET /v1/models/:model`, with Ollama's OpenAI-shaped 404."""
        name = call.path.removeprefix("/v1/models/")
        slot = self.store.get(name)
        if slot is None:
            await call.json_reply({"error": {"message": f"model '{name}' not found",
                                             "type": "api_error", "param": None,
                                             "code": None}}, 404)
            return
        await call.json_reply(_openai_model(slot.model.name, slot.modified_at))

    async def _ps(self, call: Call) -> None:
        await call.json_reply({"models": self.store.running()})

    async def _show(self, call: Call) -> None:
        body = await call.json()
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            raise HttpError(400, "model is required")
        shown = self.store.show(name)
        if shown is None:
            raise HttpError(404, f"model '{name}' not found")
        await call.json_reply(shown)

    async def _generate(self, call: Call) -> None:
        body = await call.json()
        self.stats.recent.append(body)
        await inference.generate(self, call, body, chat=False)

    async def _chat(self, call: Call) -> None:
        body = await call.json()
        self.stats.recent.append(body)
        await inference.generate(self, call, body, chat=True)

    async def _embed(self, call: Call) -> None:
        body = await call.json()
        self.stats.recent.append(body)
        await inference.embed(self, call, body, legacy=False)

    async def _embeddings(self, call: Call) -> None:
        body = await call.json()
        self.stats.recent.append(body)
        await inference.embed(self, call, body, legacy=True)

    async def _copy(self, call: Call) -> None:
        body = await call.json()
        source, dest = body.get("source"), body.get("destination")
        if not isinstance(source, str) or not isinstance(dest, str) or not source or not dest:
            raise HttpError(400, "source and destination are required")
        if not self.store.copy(source, dest):
            raise HttpError(404, f"model '{source}' not found")
        await call.respond(200, b"")

    async def _delete(self, call: Call) -> None:
        body = await call.json()
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            raise HttpError(400, "model is required")
        if not self.store.delete(name):
            raise HttpError(404, f"model '{name}' not found")
        await call.respond(200, b"")

    async def _progress(self, call: Call, stream: bool, steps: list[dict[str, Any]],
                        delay: float = 0.0) -> None:
        """Send progress objects as NDJSON, or only the last one when `stream` is false."""
        if stream:
            await call.start_stream()
        for step in steps:
            if delay:
                await asyncio.sleep(delay)
            if "error" in step:
                if stream:
                    await call.line(step)
                    await call.end_stream()
                    return
                raise HttpError(500, step["error"])
            if stream:
                await call.line(step)
        if stream:
            await call.end_stream()
        else:
            await call.json_reply(steps[-1])

    async def _pull(self, call: Call) -> None:
        body = await call.json()
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise HttpError(400, "model is required")
        stream = body.get("stream", True) is not False
        steps: list[dict[str, Any]] = [{"status": "pulling manifest"}]
        if self.library is not None and full_name(name) not in self.library:
            steps.append({"error": "pull model manifest: file does not exist"})
            await self._progress(call, stream, steps)
            return
        model = (self.store.get(name) or self.store.add(EmulatedModel(name, loaded=False))).model
        digest = "sha256:" + model.digest
        parts = 4
        for i in range(1, parts + 1):
            steps.append({"status": f"pulling {model.digest[:12]}", "digest": digest,
                          "total": model.size, "completed": model.size * i // parts})
        steps += [{"status": "verifying sha256 digest"}, {"status": "writing manifest"},
                  {"status": "success"}]
        await self._progress(call, stream, steps, self.pull_seconds / len(steps))

    async def _push(self, call: Call) -> None:
        """Ollama's push: progress objects per layer, then `success` (no registry is reached)."""
        body = await call.json()
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise HttpError(400, "model is required")
        stream = body.get("stream", True) is not False
        slot = self.store.get(name)
        if slot is None:
            raise HttpError(404, f"model '{name}' not found")
        self.stats.pushed.append(full_name(name))
        digest, size = "sha256:" + slot.model.digest, slot.model.size
        steps: list[dict[str, Any]] = [{"status": "retrieving manifest"}]
        steps += [{"status": f"pushing {slot.model.digest[:12]}", "digest": digest,
                   "total": size, "completed": size * i // 2} for i in (1, 2)]
        steps += [{"status": "pushing manifest"}, {"status": "success"}]
        await self._progress(call, stream, steps, self.pull_seconds / len(steps))

    async def _create(self, call: Call) -> None:
        body = await call.json()
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise HttpError(400, "model is required")
        stream = body.get("stream", True) is not False
        base = body.get("from")
        if base is None and isinstance(body.get("modelfile"), str):
            match = re.search(r"^\s*FROM\s+(\S+)", body["modelfile"], re.M | re.I)
            base = match.group(1) if match else None
        files = body.get("files") or {}
        steps: list[dict[str, Any]] = []
        if base is not None:
            source = self.store.get(str(base))
            if source is None:
                steps.append({"error": f"model '{base}' not found"})
                await self._progress(call, stream, steps)
                return
            model = attrs.evolve(source.model, name=name, loaded=False,
                                 parent=source.model.name)
            steps.append({"status": f"using existing layer sha256:{source.model.digest}"})
        elif files:
            missing = [d for d in files.values() if d not in self.store.blobs]
            if missing:
                raise HttpError(400, f"blob {missing[0]} not found: upload it first")
            size = sum(self.store.blobs[d] for d in files.values())
            model = EmulatedModel(name, size=size, loaded=False)
            steps.append({"status": "parsing GGUF"})
        else:
            raise HttpError(400, "neither 'from' nor 'files' was specified")
        slot = self.store.add(model)
        if isinstance(body.get("system"), str):
            slot.system = body["system"]
        if isinstance(body.get("template"), str):
            slot.template = body["template"]
        steps += [{"status": "writing manifest"}, {"status": "success"}]
        await self._progress(call, stream, steps)

    async def _get_stats(self, call: Call) -> None:
        data = self.stats.as_dict()
        data.update(node=self.name, loaded=[m["name"] for m in self.store.running()])
        await call.json_reply(data)

    async def _get_faults(self, call: Call) -> None:
        await call.json_reply(attrs.asdict(self.faults))

    async def _set_faults(self, call: Call) -> None:
        body = await call.json()
        try:
            faults = Faults.from_json(body, self.faults)
        except (ValueError, TypeError) as exc:
            raise HttpError(400, str(exc)) from None
        refuse_for = body.get("refuse_seconds")
        if refuse_for is not None and (not isinstance(refuse_for, int | float) or refuse_for <= 0):
            raise HttpError(400, "refuse_seconds must be a number above 0")
        self.set_faults(attrs.evolve(faults, refuse=False))
        await call.json_reply(attrs.asdict(faults))
        if (faults.refuse or refuse_for) and self.on_refuse is not None:
            # answer first, then close the listener (the reply must not be cut)
            asyncio.get_running_loop().call_later(
                0.05, lambda: asyncio.ensure_future(self.on_refuse(refuse_for)))


def _openai_model(name: str, modified: float) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": int(modified), "owned_by": "library"}


async def blob_route(app: EmulatorApp, call: Call) -> bool:
    """HEAD/POST /api/blobs/sha256:<hex>: check or upload a blob (its digest is verified)."""
    match = _DIGEST.match(call.path.removeprefix("/api/blobs/"))
    if not call.path.startswith("/api/blobs/"):
        return False
    if match is None:
        await call.error(400, "invalid digest format")
        return True
    digest = f"sha256:{match.group(1)}"
    if call.method == "HEAD":
        await call.respond(200 if digest in app.store.blobs else 404, b"")
        return True
    if call.method != "POST":
        await call.text("405 method not allowed", 405)
        return True
    data = await call.body()
    if hashlib.sha256(data).hexdigest() != match.group(1):
        await call.error(400, "digest mismatch")
        return True
    app.store.blobs[digest] = len(data)
    await call.respond(201, b"")
    return True

