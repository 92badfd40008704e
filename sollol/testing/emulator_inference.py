"""The emulator's inference endpoints: /api/generate, /api/chat, /api/embed, /api/embeddings."""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from sollol.testing import emulator_fields as fields
from sollol.testing.emulator_http import Call, DroppedConnection, HttpError
from sollol.testing.emulator_models import (
    ModelSlot,
    ModelStore,
    count_tokens,
    embedding,
    fill_schema,
    iso_now,
    parse_keep_alive,
    reply_tokens,
)
from sollol.testing.emulator_state import Faults, Speed, Stats

NS = 1_000_000_000


class EmulatorApp(Protocol):
    """What inference needs of the emulator (emulator_app.EmulatorApp is the one there is)."""

    store: ModelStore
    speed: Speed
    faults: Faults
    stats: Stats
    load_locks: dict[str, asyncio.Lock]

    def slots(self) -> AbstractAsyncContextManager[None]: ...

    def log_request(self, path: str, prompt: str) -> None: ...


def _model(app: EmulatorApp, body: dict[str, Any]) -> ModelSlot:
    name = body.get("model")
    if not isinstance(name, str) or not name.strip():
        raise HttpError(400, "model is required")
    slot = app.store.get(name)
    if slot is None:
        raise HttpError(404, f"model '{name}' not found")
    app.stats.models[slot.model.name] += 1
    return slot


def _keep_alive(body: dict[str, Any]) -> float | None:
    try:
        return parse_keep_alive(body.get("keep_alive"))
    except ValueError as exc:
        raise HttpError(400, str(exc)) from None


def _prompt_of(body: dict[str, Any], chat: bool) -> str:
    if not chat:
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):
            raise HttpError(400, "prompt must be a string")
        return f"{body.get('system') or ''}\n{prompt}".strip()
    messages = body.get("messages") or []
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise HttpError(400, "messages must be a list of objects")
    return "\n".join(f"{m.get('role', '')}: {m.get('content') or ''}" for m in messages)


def _num_predict(body: dict[str, Any]) -> int | None:
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise HttpError(400, "options must be an object")
    value = options.get("num_predict")
    return value if isinstance(value, int) and value >= 0 else None


def _pieces(text: str, size: int = 8) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def _reply(app: EmulatorApp, slot: ModelSlot, body: dict[str, Any], prompt: str,
           ) -> tuple[list[str], str, list[dict[str, Any]] | None]:
    """(chunks, done_reason, tool_calls) the model answers with."""
    speed = app.speed
    natural = (len(speed.response_text.split(" ")) if speed.response_text is not None
               else speed.response_tokens)
    limit = _num_predict(body)
    count = natural if limit is None else min(limit, natural)
    reason = "length" if limit is not None and limit < natural else "stop"
    words = reply_tokens(slot.model.name, prompt, count, speed.response_text)
    tools = body.get("tools")
    messages = body.get("messages") or []
    # (Ollama's generate has neither tools nor messages: it ignores them, as here)
    if (isinstance(tools, list) and tools and isinstance(messages, list) and messages
            and isinstance(messages[-1], dict) and messages[-1].get("role") == "user"
            and "prompt" not in body):
        if "tools" not in slot.model.capabilities:
            raise HttpError(400, f'"{slot.model.name}" does not support tools')
        function = (tools[0] if isinstance(tools[0], dict) else {}).get("function")
        function = function if isinstance(function, dict) else {}
        schema = function.get("parameters")
        args = fill_schema(schema if isinstance(schema, dict) else {"type": "object"}, words)
        return [""], "stop", [{"function": {"name": str(function.get("name", "")),
                                             "arguments": args}}]
    fmt = body.get("format")
    if fmt == "json":
        return _pieces(json.dumps({"response": "".join(words).strip()})), reason, None
    if isinstance(fmt, dict):
        return _pieces(json.dumps(fill_schema(fmt, words))), reason, None
    return words, reason, None


async def _ensure_loaded(app: EmulatorApp, slot: ModelSlot, keep_alive: float | None) -> float:
    """Load a cold model (taking its load time); return the seconds spent loading."""
    lock = app.load_locks.setdefault(slot.model.name, asyncio.Lock())
    start = time.perf_counter()
    async with lock:
        if not app.store.is_loaded(slot.model.name):
            await asyncio.sleep(slot.model.load_seconds * app.faults.slowdown)
            app.stats.loads += 1
        # keep_alive 0 means "unload after this request"; the caller unloads when done
        app.store.mark_loaded(slot.model.name, None if keep_alive == 0 else keep_alive)
    return time.perf_counter() - start


def _piece(name: str, chat: bool, text: str, thinking: str = "",
           top_logprobs: int | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"model": name, "created_at": iso_now()}
    if chat:
        obj["message"] = {"role": "assistant", "content": text}
        if thinking:
            obj["message"]["thinking"] = thinking
    else:
        obj["response"] = text
        if thinking:
            obj["thinking"] = thinking
    if top_logprobs is not None and text:
        obj["logprobs"] = fields.logprobs(text, top_logprobs)
    obj["done"] = False
    return obj


async def _stream(app: EmulatorApp, call: Call, name: str, chat: bool,
                  pieces: list[tuple[str, str]], per_token: float,
                  top_logprobs: int | None) -> None:
    """Send one NDJSON object per token, paced at the node's speed; drop or stall if told to."""
    await call.start_stream()
    start = time.perf_counter()
    drop_after, stall_after = app.faults.drop_after, app.faults.stall_after
    for i, (text, thinking) in enumerate(pieces):
        if per_token:
            delay = start + (i + 1) * per_token - time.perf_counter()
            if delay > 0.001:  # batch sub-millisecond waits: one timer per token is costly
                await asyncio.sleep(delay)
        if drop_after is not None and i >= drop_after:
            app.stats.injected["drop"] += 1
            raise DroppedConnection("injected drop")
        if stall_after is not None and i >= stall_after:
            app.stats.injected["stall"] += 1
            await call.wait_disconnect()  # a stalled generation: silence, the socket stays open
            raise DroppedConnection("client left a stalled stream")
        await call.line(_piece(name, chat, text, thinking, top_logprobs))


async def generate(app: EmulatorApp, call: Call, body: dict[str, Any], chat: bool) -> None:
    """/api/generate and /api/chat: NDJSON by default, one object with `stream: false`."""
    slot = _model(app, body)
    prompt = _prompt_of(body, chat)
    keep_alive = _keep_alive(body)
    stream = body.get("stream", True) is not False
    name = slot.model.name
    if "completion" not in slot.model.capabilities:
        raise HttpError(400, f'"{name}" does not support {"chat" if chat else "generate"}')
    fields.check(body, chat)
    top_logprobs = int(body.get("top_logprobs") or 0) if fields.wants_logprobs(body) else None
    think = body.get("think") not in (None, False)
    if think and "thinking" not in slot.model.capabilities:
        raise HttpError(400, f'"{name}" does not support thinking')
    empty = not (body.get("messages") if chat else body.get("prompt"))
    if not empty:
        app.log_request(call.path, prompt)
    started = time.perf_counter()
    async with app.slots():
        unload_only = empty and keep_alive == 0
        load_s = 0.0 if unload_only else await _ensure_loaded(app, slot, keep_alive)
        if empty:  # Ollama: an empty prompt loads (or with keep_alive 0 unloads) the model
            if unload_only:
                app.store.unload(name)
            reason = "unload" if unload_only else "load"
            obj: dict[str, Any] = {"model": name, "created_at": iso_now(), "done": True,
                                   "done_reason": reason}
            obj.update({"message": {"role": "assistant", "content": ""}} if chat
                       else {"response": ""})
            await call.json_reply(obj)
            return
        if keep_alive == 0:
            app.store.unload(name)
        chunks, reason, tool_calls = _reply(app, slot, body, prompt)
        thoughts = reply_tokens(name, "think:" + prompt, 6) if think else []
        faults, speed = app.faults, app.speed
        first = speed.latency * faults.slowdown + faults.extra_latency
        per_token = faults.slowdown / speed.tokens_per_second if speed.tokens_per_second else 0.0
        if first:
            await asyncio.sleep(first)
        prompt_s = time.perf_counter() - started - load_s

        pieces = [("", t) for t in thoughts] + [(c, "") for c in chunks]
        gen_start = time.perf_counter()
        if stream:
            await _stream(app, call, name, chat, pieces, per_token, top_logprobs)
        elif per_token:
            await asyncio.sleep(per_token * len(pieces))
        eval_s = max(time.perf_counter() - gen_start, 1e-6)
        app.stats.tokens += len(pieces)
        final = _piece(name, chat, "" if stream else "".join(chunks),
                       "" if stream else "".join(thoughts).strip())
        final.update(done=True, done_reason=reason,
                     total_duration=int((time.perf_counter() - started) * NS),
                     load_duration=int(load_s * NS), prompt_eval_count=count_tokens(prompt),
                     prompt_eval_duration=max(int(prompt_s * NS), 1),
                     eval_count=len(pieces), eval_duration=max(int(eval_s * NS), 1))
        if tool_calls is not None and chat:  # (generate has no message to carry them)
            final["message"]["tool_calls"] = tool_calls
        if top_logprobs is not None and not stream:
            final["logprobs"] = [p for c in chunks for p in fields.logprobs(c, top_logprobs)]
        if not chat and not body.get("raw"):
            final["context"] = list(range(1, final["prompt_eval_count"] + len(pieces) + 1))
        if stream:
            await call.line(final)
            await call.end_stream()
        elif faults.drop_after is not None:
            app.stats.injected["drop"] += 1
            await call.drop_partial(json.dumps(final).encode())
        else:
            await call.json_reply(final)


async def embed(app: EmulatorApp, call: Call, body: dict[str, Any], legacy: bool) -> None:
    """/api/embed (normalised, batched) and the legacy /api/embeddings (one vector)."""
    slot = _model(app, body)
    keep_alive = _keep_alive(body)
    started = time.perf_counter()
    if legacy:
        texts = [body.get("prompt") or ""]
    else:
        raw = body.get("input", "")
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise HttpError(400, "input must be a string or a list of strings")
    dims = body.get("dimensions") or slot.model.embedding_length
    if not isinstance(dims, int) or dims <= 0:
        raise HttpError(400, "dimensions must be a positive integer")
    async with app.slots():
        load_s = await _ensure_loaded(app, slot, keep_alive)
        faults, speed = app.faults, app.speed
        wait = speed.latency * faults.slowdown + faults.extra_latency
        if wait:
            await asyncio.sleep(wait)
        if keep_alive == 0:  # as for generation: unload once the request is done
            app.store.unload(slot.model.name)
    if legacy:
        vector = embedding(slot.model.name, texts[0], dims, normalize=False) if texts[0] else []
        reply: dict[str, Any] = {"embedding": vector}
    else:
        reply = {"model": slot.model.name,
                 "embeddings": [embedding(slot.model.name, t, dims) for t in texts],
                 "total_duration": int((time.perf_counter() - started) * NS),
                 "load_duration": int(load_s * NS),
                 "prompt_eval_count": sum(count_tokens(t) for t in texts)}
    if app.faults.drop_after is not None:
        app.stats.injected["drop"] += 1
        await call.drop_partial(json.dumps(reply).encode())
    await call.json_reply(reply)
