"""Batch jobs on Ray Data through a SOLLOL gateway: `Dataset.map_batches(sollol.ray.Answers, ...)`.

Each Ray actor keeps one `sollol.Cluster(gateway=..., api_key=...)` client and answers the rows
of a batch concurrently over it. Every input row comes back once, in its place in the batch, with
the answer, the route and backend the gateway reported for it, the attempts it took, and the error
it ended with (None when answered): a row that fails after its retries is recorded, never dropped.

Ray itself is imported only by `answer()` (the helper that builds the `map_batches` call), so this
module loads without Ray; `Answers` needs only SOLLOL and runs wherever Ray puts it.
See docs/ray.md#batch-jobs-on-ray-data.
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

import attrs

from sollol.client.facade import Cluster
from sollol.client.tasks import Op, Response, Task
from sollol.errors import (
    BackendError,
    Forbidden,
    NoRouteAvailable,
    Overloaded,
    SollolError,
    Unauthorized,
)

if TYPE_CHECKING:
    from ray.data import Dataset

OUTPUTS = ("response", "route", "backend", "attempts", "error", "error_type")
"""The columns `Answers` adds to each row."""
RETRIED: tuple[type[SollolError], ...] = (BackendError, Overloaded, NoRouteAvailable)
"""Errors worth another try: the gateway's own retries ran out, or it was full or had no node."""
FATAL: tuple[type[SollolError], ...] = (Unauthorized, Forbidden)
"""Errors of the job's setup (its key), not of a row: they stop the job with SOLLOL's message."""
MAX_BACKOFF = 30.0


def require_ray() -> ModuleType:
    """The `ray` package, or a SollolError saying how to install it."""
    try:
        import ray.data  # `ray[data]`: Ray Data needs pyarrow and pandas as well
    except ImportError as exc:
        msg = (f"Ray Data is not installed ({exc}): pip install 'sollol[ray]' "
               f"(it brings ray[data])")
        raise SollolError(msg) from None
    return ray


@attrs.frozen
class Outcome:
    """How one row ended: the reply, or the error after its last attempt."""

    response: Response | None
    attempts: int
    error: str | None = None
    error_type: str | None = None

    def columns(self) -> tuple[Any, ...]:
        """The row's values of OUTPUTS."""
        reply = self.response
        return (reply.text if reply else None, reply.route if reply else None,
                reply.backend if reply else None, self.attempts, self.error, self.error_type)


class Answers:
    """A Ray Data callable class: `ds.map_batches(Answers, fn_constructor_kwargs={...})`.

    `column` holds each row's prompt (a string); `op` is "chat" (the prompt is the user message,
    `system` an optional system message) or "generate". `fields` are Ollama request fields
    (`options={"temperature": 0}`, `format="json"`...). A row gets `retries` more tries after a
    retryable error (BackendError, Overloaded, NoRouteAvailable), waiting `backoff` seconds,
    doubled each time; `stream=True` reads each reply as a stream (a reply cut mid-stream is
    retried whole). `in_flight` rows of a batch are sent at once.
    """

    def __init__(self, gateway: str, model: str, *, api_key: str | None = None,
                 column: str = "prompt", op: Op = "chat", system: str | None = None,
                 retries: int = 3, backoff: float = 0.5, stream: bool = False,
                 in_flight: int = 8, timeout: float = 300.0,
                 fields: Mapping[str, Any] | None = None) -> None:
        if op not in ("chat", "generate"):
            raise ValueError(f"op must be 'chat' or 'generate', not {op!r}")
        if system is not None and op != "chat":
            raise ValueError("system= is a chat message: use op='chat' or pass "
                             "fields={'system': ...} for generate")
        if retries < 0 or backoff < 0 or in_flight < 1:
            raise ValueError("retries and backoff must be >= 0 and in_flight >= 1")
        if column in OUTPUTS:
            raise ValueError(f"column {column!r} is one of the output columns {OUTPUTS}")
        Task(op, model)  # the model name is checked once, not per row
        self.model, self.column, self.op, self.system = model, column, op, system
        self.retries, self.backoff, self.stream = retries, backoff, stream
        self.fields = dict(fields or {})
        self._in_flight = in_flight
        self._cluster = Cluster(gateway=gateway, api_key=api_key, timeout=timeout)
        self._cluster.start()

    def __call__(self, batch: Any) -> dict[str, Any]:
        """The batch with OUTPUTS added, row for row, as columns (name -> values).

        Takes any of Ray Data's batch formats: columns of numpy arrays (the default), a pandas
        DataFrame or a pyarrow Table."""
        batch = _columns(batch)
        if self.column not in batch:
            msg = (f"the batch has no column {self.column!r} (columns: "
                   f"{', '.join(map(str, batch)) or 'none'}): pass column= to sollol.ray")
            raise ValueError(msg)
        clash = [name for name in OUTPUTS if name in batch]
        if clash:
            raise ValueError(f"the batch already has column(s) {clash}: sollol.ray writes "
                             f"{OUTPUTS}; rename them first")
        prompts = list(batch[self.column])
        outcomes = self._cluster.call_sync(lambda: self._answer_all(prompts))
        out = dict(batch)
        rows = [o.columns() for o in outcomes]
        for i, name in enumerate(OUTPUTS):
            out[name] = [row[i] for row in rows]
        return out

    def close(self) -> None:
        """Close the actor's client (Ray ends the process anyway when the job is done)."""
        self._cluster.stop()

    def __del__(self) -> None:
        # Ray Data deletes the UDF when it shuts its actors down gracefully. At interpreter exit
        # the client's loop thread may be frozen already: waiting for it would hang the worker.
        cluster = getattr(self, "_cluster", None)
        if cluster is not None and cluster.running and not sys.is_finalizing():
            cluster.stop()

    async def _answer_all(self, prompts: Sequence[Any]) -> list[Outcome]:
        gate = asyncio.Semaphore(self._in_flight)

        async def one(prompt: Any) -> Outcome:
            async with gate:
                return await self._answer(prompt)

        return list(await asyncio.gather(*(one(p) for p in prompts)))

    async def _answer(self, prompt: Any) -> Outcome:
        if not isinstance(prompt, str) or not prompt.strip():
            missing = prompt is None or (isinstance(prompt, float) and math.isnan(prompt))
            problem = ("is missing" if missing else "is empty" if isinstance(prompt, str)
                       else f"must be a string, not {type(prompt).__name__}")
            return Outcome(None, 0, f"column {self.column!r} {problem}", "RequestError")
        task = (Task.chat(self.model, prompt, system=self.system, **self.fields)
                if self.op == "chat" else Task.generate(self.model, prompt, **self.fields))
        attempt = 0
        while True:
            attempt += 1
            try:
                return Outcome(await self._send(task), attempt)
            except FATAL:
                raise
            except RETRIED as exc:
                if attempt > self.retries:
                    return Outcome(None, attempt, str(exc), type(exc).__name__)
                await asyncio.sleep(min(MAX_BACKOFF, self.backoff * 2 ** (attempt - 1)))
            except SollolError as exc:  # this row's request (RequestError...): not retried
                return Outcome(None, attempt, str(exc), type(exc).__name__)

    async def _send(self, task: Task) -> Response:
        if not self.stream:
            return await self._cluster.arun(task)
        stream = self._cluster.astream(task)
        try:
            parts = [chunk async for chunk in stream]
        finally:
            await stream.aclose()
        last = dict(parts[-1].data) if parts else {}
        if not last.get("done"):
            raise BackendError("the stream ended before its last chunk")
        text = "".join(p.text for p in parts)
        data = ({**last, "message": {"role": "assistant", "content": text}}
                if task.op == "chat" else {**last, "response": text})
        route = stream.route
        return Response(task.op, task.model, data, route=route.get("route", ""),
                        backend=route.get("backend", ""), policy=route.get("policy", ""),
                        reason=route.get("reason", ""), fallback=route.get("fallback", ""))


def _columns(batch: Any) -> Mapping[str, Sequence[Any]]:
    """A batch as columns: a pyarrow Table (`to_pydict`), a pandas DataFrame, or a mapping."""
    if hasattr(batch, "to_pydict"):
        return batch.to_pydict()
    if hasattr(batch, "columns") and hasattr(batch, "iloc"):
        return {str(name): batch[name].tolist() for name in batch.columns}
    if isinstance(batch, Mapping):
        return batch
    raise TypeError(f"sollol.ray takes a batch of columns (numpy, pandas or pyarrow), not "
                    f"{type(batch).__name__}")


def answer(dataset: Dataset, gateway: str, model: str, *, actors: int = 2,
           batch_size: int = 16, num_cpus: float = 0.25, preserve_order: bool = True,
           **options: Any) -> Dataset:
    """`dataset` with every row answered through the gateway (OUTPUTS added), lazily.

    `actors` Ray actors each keep one client; `options` are `Answers`' keywords. Ray Data
    returns blocks in the order they finish unless told otherwise: `preserve_order` says so in
    the `DataContext` the dataset carries (a dataset copies the current one when it is made, and
    shares it with the datasets derived from it), so the rows come back in input order.
    """
    ray = require_ray()
    if preserve_order:
        context = getattr(dataset, "context", None) or ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
    return dataset.map_batches(
        Answers, fn_constructor_kwargs={"gateway": gateway, "model": model, **options},
        batch_size=batch_size, num_cpus=num_cpus,
        compute=ray.data.ActorPoolStrategy(size=actors))
