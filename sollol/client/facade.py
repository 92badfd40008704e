"""`sollol.Cluster`: SOLLOL embedded in a program, without an HTTP server.

A facade that owns one `sollol.core.runtime.ClusterRuntime` (routes, policy, events; shared with
the gateway) and one `Dispatcher` (the gateway's forwarding, translation and retries), so a
library call takes exactly the path an HTTP request takes after validation.

Two ways to run it:

- async: `async with sollol.Cluster(...) as c: await c.achat(...)` -- the runtime lives on the
  caller's event loop;
- sync: `with sollol.Cluster(...) as c: c.chat(...)` -- the runtime lives on a private loop
  on a daemon thread (health checks keep running between calls).

The async methods also work on a cluster started synchronously (they hop to its loop); the
sync methods refuse to run on the cluster's own loop, where they would deadlock.

Replies come whole (`chat`, ...) or as streams of chunks (`stream_chat`, `astream_chat`, ...).
With `gateway=URL` the same API talks to a remote SOLLOL gateway over HTTP instead
(`sollol.client.transport.RemoteGateway`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from sollol.client import aggregate
from sollol.client.fanout import FanOut
from sollol.client.loop_thread import LoopThread
from sollol.client.streaming import AsyncChunkStream, Chunk, ChunkStream, chunks
from sollol.client.tasks import Response, Task, TaskResult
from sollol.client.transport import InProcess, RemoteGateway, raise_for
from sollol.core.runtime import ClusterRuntime, load
from sollol.dialects.jsonin import from_node
from sollol.errors import BackendError

T = TypeVar("T")


class Cluster:
    """Chat, generate and embed over SOLLOL's routes; fan many tasks out in parallel."""

    def __init__(
        self, config: os.PathLike[str] | str | None = None, *,
        nodes: Sequence[str] | None = None, rpc_backends: Sequence[str] | None = None,
        plugins: Sequence[str] | None = None, runtime: ClusterRuntime | None = None,
        max_retries: int = 2, gateway: str | None = None, timeout: float = 300.0,
        api_key: str | None = None, **settings: Any,
    ) -> None:
        """Load config and plugins (`config` file, then keyword overrides of config keys).

        `nodes` sets `ollama_nodes`, `rpc_backends` the rpc-servers, `plugins` the allow-list;
        other keywords are config keys (`model_sharding_enabled=True`...). Or pass a `runtime`
        built elsewhere (it is started and stopped only if it is not running yet). Or pass
        `gateway="http://host:11435"` to send everything to a running SOLLOL gateway instead
        of running the routes here (`timeout`: seconds a request may take; `api_key`: the
        gateway's access key, default $SOLLOL_KEY).
        """
        if api_key is not None and gateway is None:
            raise TypeError("api_key= is the key of a remote gateway: pass gateway= too")
        if gateway is not None:
            if runtime is not None or config is not None or settings or any(
                    v is not None for v in (nodes, rpc_backends, plugins)):
                raise TypeError("a remote gateway brings its own config: pass gateway= alone")
            self.runtime: ClusterRuntime | None = None
            self._transport: InProcess | RemoteGateway = RemoteGateway(gateway, timeout,
                                                                       api_key)
            self._init_state()
            return
        overrides = dict(settings)
        for key, value in (("ollama_nodes", nodes), ("rpc_backends", rpc_backends),
                           ("plugins", plugins)):
            if value is not None:
                overrides[key] = [value] if isinstance(value, str) else list(value)
        if runtime is not None and (overrides or config is not None):
            raise TypeError("pass either a runtime or config/settings, not both")
        if runtime is None:
            loaded, pm = load(path=config, overrides=overrides)
            runtime = ClusterRuntime(config=loaded, pm=pm)
        self.runtime = runtime
        self._transport = InProcess(runtime, max_retries)
        self._init_state()

    def _init_state(self) -> None:
        self._open_transport = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: LoopThread | None = None

    def __repr__(self) -> str:
        state = "sync" if self._thread else ("async" if self._loop else "stopped")
        if isinstance(self._transport, RemoteGateway):
            return f"<sollol.Cluster {state} gateway={self._transport.url}>"
        return f"<sollol.Cluster {state} routes={sorted(self._transport.runtime.routes)}>"

    @property
    def remote(self) -> bool:
        """True when requests go to a remote gateway rather than to routes in this process."""
        return isinstance(self._transport, RemoteGateway)

    @property
    def running(self) -> bool:
        """True between start and stop."""
        return self._loop is not None

    # ---- lifecycle

    async def astart(self) -> None:
        """Start on the running loop: routes (unless already running) and the connection pool."""
        if self._loop is not None:
            raise RuntimeError("this sollol.Cluster is already started")
        self._loop = asyncio.get_running_loop()
        try:
            await self._open()
        except BaseException:
            self._loop = None
            raise

    async def astop(self) -> None:
        """Close the connection pool and stop what `astart()` started."""
        if self._thread is not None:
            raise RuntimeError("this sollol.Cluster was started with start(); call stop()")
        if self._loop is None:
            return
        try:
            await self._close()
        finally:
            self._loop = None

    def start(self) -> None:
        """Start on a private event loop thread, for the synchronous API."""
        if self._loop is not None:
            raise RuntimeError("this sollol.Cluster is already started")
        thread = LoopThread()
        try:
            thread.run(self._open())
        except BaseException:
            thread.stop()
            raise
        self._thread, self._loop = thread, thread.loop

    def stop(self) -> None:
        """Stop what `start()` started, then the private loop."""
        if self._thread is None:
            if self._loop is not None:
                raise RuntimeError("this sollol.Cluster was started with astart(); "
                                   "call await astop()")
            return
        thread, self._thread = self._thread, None
        try:
            thread.run(self._close())
        finally:
            self._loop = None
            thread.stop()

    async def __aenter__(self) -> Cluster:
        await self.astart()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.astop()

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _open(self) -> None:
        await self._transport.open()
        self._open_transport = True

    async def _close(self) -> None:
        self._open_transport = False
        await self._transport.close()

    # ---- single requests

    async def achat(self, model: str, messages: str | Sequence[Mapping[str, Any]], *,
                    system: str | None = None, **fields: Any) -> Response:
        """One chat reply; `messages` may be a single user prompt. Extra Ollama fields pass."""
        return await self.arun(Task.chat(model, messages, system=system, **fields))

    def chat(self, model: str, messages: str | Sequence[Mapping[str, Any]], *,
             system: str | None = None, **fields: Any) -> Response:
        return self.run(Task.chat(model, messages, system=system, **fields))

    async def agenerate(self, model: str, prompt: str, **fields: Any) -> Response:
        """One completion of `prompt` (Ollama `/api/generate` fields pass through)."""
        return await self.arun(Task.generate(model, prompt, **fields))

    def generate(self, model: str, prompt: str, **fields: Any) -> Response:
        return self.run(Task.generate(model, prompt, **fields))

    async def aembed(self, model: str, input: str | Sequence[str], **fields: Any) -> Response:
        """Embeddings of one text or a list of texts (`response.embeddings`)."""
        return await self.arun(Task.embed(model, input, **fields))

    def embed(self, model: str, input: str | Sequence[str], **fields: Any) -> Response:
        return self.run(Task.embed(model, input, **fields))

    async def arun(self, task: Task) -> Response:
        """Send one task; raise its error (RequestError, ModelNotFound, BackendError...)."""
        return await self.call(lambda: self._send(task))

    def run(self, task: Task) -> Response:
        return self.call_sync(lambda: self._send(task))

    # ---- streamed replies

    def stream(self, task: Task) -> ChunkStream:
        """A chat or generate task's reply chunk by chunk: `for chunk in c.stream(task)`;
        `close()` (from any thread) or leaving a `with` block stops it."""
        return ChunkStream(self._streamable(task), self._open_stream, self._require_loop())

    def astream(self, task: Task) -> AsyncChunkStream:
        """The async form: `async for chunk in c.astream(task)`; `await aclose()` stops it."""
        return AsyncChunkStream(self._streamable(task), self._open_stream, self._require_loop())

    def stream_chat(self, model: str, messages: str | Sequence[Mapping[str, Any]], *,
                    system: str | None = None, **fields: Any) -> ChunkStream:
        return self.stream(Task.chat(model, messages, system=system, **fields))

    def astream_chat(self, model: str, messages: str | Sequence[Mapping[str, Any]], *,
                     system: str | None = None, **fields: Any) -> AsyncChunkStream:
        return self.astream(Task.chat(model, messages, system=system, **fields))

    def stream_generate(self, model: str, prompt: str, **fields: Any) -> ChunkStream:
        return self.stream(Task.generate(model, prompt, **fields))

    def astream_generate(self, model: str, prompt: str, **fields: Any) -> AsyncChunkStream:
        return self.astream(Task.generate(model, prompt, **fields))

    @staticmethod
    def _streamable(task: Task) -> Task:
        if task.op == "embed":
            raise ValueError("embeddings come back whole: use embed(), not a stream")
        return task

    def _open_stream(self, task: Task, route: dict[str, str]) -> AsyncIterator[Chunk]:
        body = {**task.body(), "stream": True}
        return chunks(self._transport.stream(task.op, body, route))

    # ---- many requests

    def fan_out(self, tasks: Iterable[Task | str], *, model: str | None = None,
                concurrency: int | None = None,
                on_result: Callable[[TaskResult], None] | None = None) -> FanOut:
        """A fan-out of `tasks` (strings are chat prompts for `model`); `await` it or `wait()`.

        `concurrency` (requests in flight at once) defaults to twice the capacity of the
        routes serving the tasks' models: every slot busy, and one request per slot waiting in
        the route's queue so its balancer sees the backlog (`sollol.client.fanout.QUEUE_FACTOR`).
        """
        if concurrency is not None and concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        listed = tuple(self._as_task(t, model) for t in tasks)
        return FanOut(listed, send=self._send, runner=self, concurrency=concurrency,
                      size=self._capacity, on_result=on_result)

    async def agather(self, tasks: Iterable[Task | str], **options: Any) -> list[TaskResult]:
        """Run `tasks` in parallel; results in input order, errors captured per task."""
        return await self.fan_out(tasks, **options)

    def gather(self, tasks: Iterable[Task | str], **options: Any) -> list[TaskResult]:
        return self.fan_out(tasks, **options).wait()

    async def asynthesize(self, model: str, results: Sequence[TaskResult], instruction: str = (
            aggregate.DEFAULT_INSTRUCTION), **fields: Any) -> Response:
        """A final chat request over the partial answers (failed ones are named, not used)."""
        return await self.arun(aggregate.synthesis_task(model, results, instruction, **fields))

    def synthesize(self, model: str, results: Sequence[TaskResult],
                   instruction: str = aggregate.DEFAULT_INSTRUCTION, **fields: Any) -> Response:
        return self.run(aggregate.synthesis_task(model, results, instruction, **fields))

    async def acapacity(self, tasks: Iterable[Task] = ()) -> int:
        """Requests the routes serving `tasks` (default: all) take at once, as a fan-out sizes
        itself; it follows node health, so it can change while the cluster runs."""
        listed = tuple(tasks)
        return await self.call(lambda: self._capacity(listed))

    def capacity(self, tasks: Iterable[Task] = ()) -> int:
        listed = tuple(tasks)
        return self.call_sync(lambda: self._capacity(listed))

    # ---- running on the cluster's loop (the `Runner` protocol of sollol.client.fanout)

    async def call(self, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Await `fn()` on the cluster's loop, hopping threads if the caller is on another."""
        loop = self._require_loop()
        if _running_loop() is loop:
            return await fn()
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(fn(), loop))

    def call_sync(self, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run `fn()` on the cluster's loop and block until it ends."""
        loop = self._require_loop()
        if _running_loop() is loop:
            raise RuntimeError("sync sollol.Cluster methods cannot run on the cluster's own "
                               "event loop; use the async ones (achat, agather, ...)")
        if self._thread is not None:
            return self._thread.run(fn())
        return asyncio.run_coroutine_threadsafe(fn(), loop).result()

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or not self._open_transport:
            raise RuntimeError("this sollol.Cluster is not started: use `with`/`async with`, "
                               "or call start()/await astart() first")
        return self._loop

    async def _capacity(self, tasks: Sequence[Task]) -> int:
        return await self._transport.capacity(tasks)

    async def _send(self, task: Task) -> Response:
        status, body, route = await self._transport.send(task.op, task.body())
        raise_for(status, body, task.model)
        try:
            data = from_node(body)
        except ValueError:
            raise BackendError(f"backend sent a reply that is not JSON: "
                               f"{body[:200]!r}") from None
        return Response(task.op, task.model, data, route=route.get("route", ""),
                        backend=route.get("backend", ""), policy=route.get("policy", ""),
                        reason=route.get("reason", ""), seconds=_seconds(data),
                        fallback=route.get("fallback", ""))

    @staticmethod
    def _as_task(task: Task | str, model: str | None) -> Task:
        if isinstance(task, Task):
            return task
        if isinstance(task, str):
            if model is None:
                raise ValueError("plain-text tasks need model=...")
            return Task.chat(model, task)
        raise TypeError(f"a task must be a sollol.Task or a prompt string, not "
                        f"{type(task).__name__}")


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _seconds(data: Mapping[str, Any]) -> float:
    total = data.get("total_duration")
    return total / 1e9 if isinstance(total, int | float) else 0.0
