"""An Ollama-API emulator for tests, benchmarks and plugin authors.

It speaks Ollama's documented HTTP API (NDJSON streaming, `/api/tags`, `/api/ps`, `/api/show`,
timing fields in nanoseconds, `{"error": ...}` bodies) with configurable models and speed, and
injects faults on demand: refused connections, HTTP errors, hangs, mid-stream drops, slowdowns.

In-process (own thread and event loop)::

    with EmulatorNode(models=["llama3.2:1b"], tokens_per_second=200) as node:
        ollama.Client(node.url).generate(model="llama3.2:1b", prompt="hi")
        node.set_faults(error_status=500)

As a process::

    python -m sollol.testing.emulator --port 11500 --model llama3.2:1b --tokens-per-second 50

At runtime: `POST /_emulator/faults` (JSON fields of `Faults`, plus `refuse_seconds` and
`reset`), `GET /_emulator/faults`, `GET /_emulator/stats`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import attrs
import uvicorn

from sollol.testing.emulator_app import EmulatorApp
from sollol.testing.emulator_http import quiet_injected_drops
from sollol.testing.emulator_models import EmulatedModel, ModelStore, full_name
from sollol.testing.emulator_state import Faults, Speed

__all__ = ["EmulatedModel", "EmulatorNode", "Faults", "Speed", "main"]
T = TypeVar("T")


def _models(values: Iterable[EmulatedModel | str]) -> tuple[EmulatedModel, ...]:
    return tuple(v if isinstance(v, EmulatedModel) else EmulatedModel(v) for v in values)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


@attrs.define
class EmulatorNode:
    """One emulated Ollama server on its own thread and event loop; `start()`, then `stop()`."""

    models: tuple[EmulatedModel, ...] = attrs.field(default=("llama3.2:1b",), converter=_models)
    host: str = "127.0.0.1"
    port: int = 0
    name: str | None = None
    tokens_per_second: float = 0.0
    latency: float = 0.0
    parallel: int = 4
    response_tokens: int = 12
    response_text: str | None = None
    faults: Faults = attrs.field(factory=Faults)
    max_loaded: int = 3
    gpu_memory: int | None = None
    """GPU memory in bytes, for `/api/ps` `size_vram` (None: every model wholly on the GPU)."""
    library: Iterable[str] | None = None
    version: str = "0.33.0"
    request_log: str | None = None
    authorization: str | None = None
    """When set, every request must carry exactly this `Authorization` value, else 401 (an
    Ollama behind a proxy with a key or basic auth)."""
    refused: list[str] = attrs.field(factory=list)
    """Paths of requests refused for a missing or wrong `Authorization`."""
    """A file that gets a line per generation started (see EmulatorApp.request_log)."""
    app: EmulatorApp | None = attrs.field(default=None, init=False)
    _loop: asyncio.AbstractEventLoop | None = attrs.field(default=None, init=False)
    _thread: threading.Thread | None = attrs.field(default=None, init=False)
    _server: uvicorn.Server | None = attrs.field(default=None, init=False)
    _reopen: asyncio.TimerHandle | None = attrs.field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> EmulatorNode:
        """Listen (on a free port if `port` is 0) and return once connections are accepted."""
        if self._thread is not None:
            raise RuntimeError("emulator node already started")
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(ready, failure),
                                        name=f"emulator-{self.port}", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        """Close the listener, cut open connections, end the thread. Safe to call twice."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(self._close(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = self._loop = None

    def __enter__(self) -> EmulatorNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- runtime control (thread-safe: each runs on the node's loop)

    def set_faults(self, faults: Faults | None = None, **changes: Any) -> Faults:
        """Replace the faults (or change some fields); `refuse=True` closes the listener."""
        new = attrs.evolve(faults or self.faults, **changes)
        self.faults = new
        self._on_loop(lambda: self._apply_faults(new))
        return new

    def clear_faults(self) -> None:
        """No faults, and listening again if the listener was closed."""
        self.set_faults(Faults())

    def refuse(self, seconds: float | None = None) -> None:
        """Close the listener (connections are refused), reopening after `seconds` if given."""
        self._on_loop(lambda: self._refuse(seconds))

    def stats(self) -> dict[str, Any]:
        """Request counts, concurrency, loads and injected faults, as `/_emulator/stats`."""
        return self._on_loop(lambda: self._require_app().stats.as_dict())

    def loaded_models(self) -> list[str]:
        return self._on_loop(lambda: [m["name"] for m in self._require_app().store.running()])

    def set_loaded(self, model: str, loaded: bool) -> None:
        """Warm or cool a model without a request (for affinity tests)."""
        def change() -> None:
            store = self._require_app().store
            if loaded:
                store.mark_loaded(full_name(model), None)
            else:
                store.unload(model)
        self._on_loop(change)

    # ---- internals

    def _require_app(self) -> EmulatorApp:
        if self.app is None:
            raise RuntimeError("emulator node is not started")
        return self.app

    def _on_loop(self, func: Callable[[], T]) -> T:
        loop = self._loop
        if loop is None:
            raise RuntimeError("emulator node is not started")

        async def run() -> Any:
            result = func()
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(run(), loop).result(10)

    async def _apply_faults(self, faults: Faults) -> None:
        self._require_app().set_faults(attrs.evolve(faults, refuse=False))
        if faults.refuse and self._server is not None:
            await self._close()
        elif not faults.refuse and self._server is None:
            await self._open()

    async def _refuse(self, seconds: float | None) -> None:
        await self._close()
        if seconds:
            loop = asyncio.get_running_loop()
            self._reopen = loop.call_later(seconds, lambda: asyncio.ensure_future(self._open()))

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = _new_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            sock = self._bind()
            self.name = self.name or f"emulator-{self.port}"
            self.app = EmulatorApp(
                name=self.name, store=ModelStore.of(self.models, self.max_loaded, self.gpu_memory),
                speed=Speed(self.tokens_per_second, self.latency, self.response_tokens,
                            self.response_text, self.parallel),
                version=self.version, on_refuse=self._refuse, request_log=self.request_log,
                library=None if self.library is None else frozenset(map(full_name, self.library)),
            )
            self.app.set_faults(attrs.evolve(self.faults, refuse=False))
            quiet_injected_drops()
            loop.run_until_complete(self._open(sock))
            if self.faults.refuse:
                loop.run_until_complete(self._close())
        except BaseException as exc:
            failure.append(exc)
            ready.set()
            loop.close()
            self._loop = None
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _bind(self) -> socket.socket:
        """A listening socket on host:port (the same port again when reopening)."""
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        return sock

    async def _open(self, sock: socket.socket | None = None) -> None:
        """Serve the app on the node's port."""
        if self._server is not None:
            return
        if self._reopen is not None:
            self._reopen.cancel()
            self._reopen = None
        sock = sock or self._bind()
        app: Any = self._require_app()
        if self.authorization is not None:
            app = _KeyedApp(app, self)
        config = uvicorn.Config(app, lifespan="off", log_config=None,
                                log_level=None, access_log=False, backlog=1024)
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        self._server = server

    async def _close(self) -> None:
        """Stop accepting and reset every open connection, as a crashed server would."""
        if self._reopen is not None:
            self._reopen.cancel()
            self._reopen = None
        server, self._server = self._server, None
        if server is None:
            return
        for listener in server.servers:
            listener.close()
        for connection in list(server.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()
        await asyncio.sleep(0)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sollol.testing.emulator",
                                description="An emulated Ollama server for tests and benchmarks.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=11434)
    p.add_argument("--name", help="Node name (sent as X-Emulator-Node).")
    p.add_argument("--model", action="append", default=[], help="A loaded model (repeatable).")
    p.add_argument("--cold-model", action="append", default=[],
                   help="A model on disk but not loaded (repeatable).")
    p.add_argument("--models-json", help="JSON list of model objects (EmulatedModel fields).")
    p.add_argument("--load-time", type=float, default=1.0, help="Seconds to load a cold model.")
    p.add_argument("--tokens-per-second", type=float, default=0.0, help="0: instantly.")
    p.add_argument("--latency", type=float, default=0.0, help="Seconds to the first token.")
    p.add_argument("--parallel", type=int, default=4, help="Requests served at once (0: any).")
    p.add_argument("--response-tokens", type=int, default=12)
    p.add_argument("--response-text", help="Always answer with this text.")
    p.add_argument("--max-loaded", type=int, default=3)
    p.add_argument("--gpu-memory", type=int, help="GPU bytes for /api/ps size_vram (0: CPU only; "
                   "default: every model wholly on the GPU).")
    p.add_argument("--library", action="append", help="Names /api/pull may fetch (default: any).")
    p.add_argument("--request-log", help="Append a line per generation started to this file.")
    p.add_argument("--faults", default="{}", help="Initial faults as JSON, e.g. '{\"hang\":true}'.")
    return p.parse_args(argv)


def node_from_args(args: argparse.Namespace) -> EmulatorNode:
    """An EmulatorNode configured from command-line arguments."""
    models: list[EmulatedModel] = [EmulatedModel(n, load_seconds=args.load_time)
                                   for n in args.model]
    models += [EmulatedModel(n, loaded=False, load_seconds=args.load_time)
               for n in args.cold_model]
    if args.models_json:
        models += [EmulatedModel(**spec) for spec in json.loads(args.models_json)]
    return EmulatorNode(
        models=models or ["llama3.2:1b"], host=args.host, port=args.port, name=args.name,
        tokens_per_second=args.tokens_per_second, latency=args.latency, parallel=args.parallel,
        response_tokens=args.response_tokens, response_text=args.response_text,
        max_loaded=args.max_loaded, gpu_memory=args.gpu_memory, library=args.library,
        faults=Faults.from_json(json.loads(args.faults)), request_log=args.request_log,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Run one emulated node until SIGINT or SIGTERM."""
    args = _parse_args(argv)
    try:
        node = node_from_args(args)
    except (ValueError, TypeError) as exc:
        raise SystemExit(f"emulator: {exc}") from None
    quiet_injected_drops()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    node.start()
    print(f"emulator {node.name} listening on {node.url}", flush=True)
    try:
        stop.wait()
    finally:
        node.stop()


if __name__ == "__main__":
    main()


class _KeyedApp:
    """The emulator behind a check of the `Authorization` header (read at every request, so a
    test may change the node's key while it runs)."""

    def __init__(self, app: Any, node: EmulatorNode) -> None:
        self.app, self.node = app, node

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        wanted = (self.node.authorization or "").encode()
        given = dict(scope.get("headers") or ()).get(b"authorization")
        if scope["type"] != "http" or given == wanted:
            await self.app(scope, receive, send)
            return
        self.node.refused.append(scope["path"])
        body = b'{"error": "unauthorized"}'
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})
