"""Streaming: pass-through watchers and translators between NDJSON (Ollama) and SSE (OpenAI).

Every stream object takes upstream bytes with `feed()` and returns what the client should get
now; `finish()` returns the closing bytes at upstream EOF. `complete` says whether the upstream
stream ended properly (Ollama: a `done: true` object; OpenAI: `data: [DONE]`), `tokens` the
generated token count when the backend reported it, and `error` an error object it sent.
"""

from __future__ import annotations

import json
import time
from typing import Any

from sollol.dialects.error_shapes import openai_error
from sollol.dialects.lines import LineBuffer, parse_object
from sollol.dialects.ollama_shape import chat_object
from sollol.dialects.replies import (
    finish_reason,
    iso_now,
    logprobs_to_ollama,
    logprobs_to_openai,
    new_id,
    ollama_message,
    ollama_stats,
    openai_tool_calls,
    openai_usage,
)

MAX_LINE = 16 * 1024 * 1024
"""Longest stream line held while waiting for its newline (a node's lines are a few KiB)."""


class Passthrough:
    """Same dialect on both sides: forward bytes untouched, remember the last lines."""

    def __init__(self, sse: bool) -> None:
        self.sse = sse
        self.buffer = LineBuffer(MAX_LINE)
        self.last: list[bytes] = []  # the last two non-empty complete lines
        self.end = b""
        self.tokens: int | None = None
        self.prompt_tokens: int | None = None
        self.error: str | None = None

    def feed(self, chunk: bytes) -> bytes:
        self.end = (self.end + chunk[-2:])[-2:]
        head = self.buffer.push(chunk)
        if head:
            self.last = _last_two(self.last, head)
        return chunk

    def finish(self) -> bytes:
        return b""

    @property
    def at_boundary(self) -> bool:
        return not self.end or self.end.endswith(b"\n\n" if self.sse else b"\n")

    @property
    def complete(self) -> bool:
        lines = self.last
        tail = self.buffer.peek().strip()  # a last line without its newline still counts
        if tail:
            lines = [*lines, tail][-2:]
        if not lines:
            return False
        last = lines[-1]
        if self.sse:
            return self._sse_complete(lines)
        data = parse_object(last)
        if data is None:
            return False
        if "error" in data:  # the backend ended the stream with its own error object
            self.error = str(data["error"])
            return True
        self.tokens = data.get("eval_count")
        self.prompt_tokens = data.get("prompt_eval_count")
        return bool(data.get("done"))

    def _sse_complete(self, lines: list[bytes]) -> bool:
        """OpenAI streams end with `[DONE]`; Anthropic's with `message_stop`, Responses with
        `response.completed` (or `.incomplete`, `.failed`); an `error` event ends any of them."""
        payload = lines[-1].removeprefix(b"data:").strip()
        if payload == b"[DONE]":
            usage = parse_object(lines[0].removeprefix(b"data:")) if len(lines) > 1 else None
            if usage and isinstance(usage.get("usage"), dict):
                self.tokens = usage["usage"].get("completion_tokens")
                self.prompt_tokens = usage["usage"].get("prompt_tokens")
            return True
        data = parse_object(payload)
        if data is None:
            return False
        kind = _text(data.get("type"))  # never unhashable: a set lookup follows
        if kind in SSE_ENDS:
            usage = end_usage(data)
            self.tokens = usage.get("output_tokens")
            self.prompt_tokens = usage.get("input_tokens")
            return True
        if kind == "error":
            self.error = error_text(data.get("error"))
            return True
        return False


RESPONSES_ENDS = frozenset({"response.completed", "response.incomplete", "response.failed"})
SSE_ENDS = RESPONSES_ENDS | {"message_stop"}  # with Anthropic's


def end_usage(data: dict[str, Any]) -> dict[str, Any]:
    """A Responses end event's `response.usage`; `{}` if absent or of the wrong JSON type."""
    return _mapping(_mapping(data.get("response")).get("usage"))


def error_text(error: Any) -> str:
    """The message of an error event's `error` (an object with a `message`, or a bare value)."""
    return str(error.get("message") if isinstance(error, dict) else error)


def _last_two(last: list[bytes], head: bytes) -> list[bytes]:
    """The last two non-empty lines of `last` and then `head`'s lines, read from the end of
    `head` (blank lines count for nothing: an SSE stream has one after every event)."""
    found: list[bytes] = []
    end = len(head)
    while len(found) < 2:
        start = head.rfind(b"\n", 0, end)
        line = head[start + 1:end].strip()
        if line:
            found.append(line)
        if start < 0:
            break
        end = start
    found.reverse()
    return (last + found)[-2:]


class Lines:
    """Split a byte stream into complete, stripped, non-empty lines."""

    def __init__(self) -> None:
        self.buffer = LineBuffer(MAX_LINE)

    def split(self, chunk: bytes) -> list[bytes]:
        head = self.buffer.push(chunk)
        if head is None:
            return []
        return [s for line in head.split(b"\n") if (s := line.strip())]

    def rest(self) -> list[bytes]:
        rest = self.buffer.take().strip()
        return [rest] if rest else []


class Translator:
    """A stream turned into another dialect: whole upstream lines in (`_line` says what one
    becomes), whole client lines or events out."""

    at_boundary = True  # only whole lines or events are ever emitted

    def __init__(self) -> None:
        self.lines = Lines()
        self.complete = False
        self.tokens: int | None = None
        self.prompt_tokens: int | None = None
        self.error: str | None = None

    def feed(self, chunk: bytes) -> bytes:
        return b"".join([self._line(line) for line in self.lines.split(chunk)])

    def finish(self) -> bytes:
        return b"".join([self._line(line) for line in self.lines.rest()])

    def _line(self, line: bytes) -> bytes:
        raise NotImplementedError


class SseToNdjson(Translator):
    """An OpenAI-compatible server's SSE stream as Ollama NDJSON (chat or generate)."""

    def __init__(self, op: str, model: str, raw_generate: bool = False) -> None:
        super().__init__()
        self.op, self.model, self.raw_generate = op, model, raw_generate
        self.started = time.perf_counter()
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] = {}
        self.timings: dict[str, Any] | None = None
        self.tool_calls: dict[int, dict[str, Any]] = {}

    def finish(self) -> bytes:
        out = super().finish()
        # a stream cut after its finish reason still gets its `done` object (once: `_done`)
        return out + self._done() if self.finish_reason is not None else out

    def _line(self, line: bytes) -> bytes:
        if not line.startswith(b"data:") or self.complete:
            return b""  # comments, event names and anything after the end
        payload = line[5:].strip()
        if payload == b"[DONE]":
            return self._done()
        data = parse_object(payload)
        if data is None:
            return b""
        if data.get("error") is not None:
            self.error = error_text(data["error"])
            self.complete = True  # the error object is the stream's end
            return _ndjson({"error": self.error})
        # a field of the wrong JSON type counts as absent: an odd node never crashes the stream
        self.usage = _mapping(data.get("usage")) or self.usage
        self.timings = _mapping(data.get("timings")) or self.timings
        out = b""
        choices = data.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if not isinstance(choice, dict):
                continue
            reason = choice.get("finish_reason")
            self.finish_reason = reason if isinstance(reason, str) else self.finish_reason
            if self.op == "chat" or not self.raw_generate:
                delta = _mapping(choice.get("delta"))
                calls = delta.get("tool_calls")
                for call in calls if isinstance(calls, list) else []:
                    if isinstance(call, dict):
                        self._merge_tool_call(call)
                text, thinking = _text(delta.get("content")), _text(delta.get("reasoning_content"))
            else:
                text, thinking = _text(choice.get("text")), None
            if text or thinking:
                piece = self._piece(text or "", thinking)
                logprobs = logprobs_to_ollama(choice.get("logprobs"))
                if logprobs:
                    piece["logprobs"] = logprobs
                out += _ndjson(piece)
        return out

    def _piece(self, text: str, thinking: str | None = None, tool_calls: Any = None,
               ) -> dict[str, Any]:
        base: dict[str, Any] = {"model": self.model, "created_at": iso_now()}
        if self.op == "chat":
            base["message"] = ollama_message(text, tool_calls, thinking)
        else:
            base["response"] = text
            if thinking:
                base["thinking"] = thinking
        base["done"] = False
        return base

    def _merge_tool_call(self, call: dict[str, Any]) -> None:
        index = call.get("index")
        slot = self.tool_calls.setdefault(index if type(index) is int else 0,
                                          {"id": None, "function": {"name": "", "arguments": ""}})
        slot["id"] = _text(call.get("id")) or slot["id"]
        function = _mapping(call.get("function"))
        slot["function"]["name"] += _text(function.get("name"))
        slot["function"]["arguments"] += _text(function.get("arguments"))

    def _done(self) -> bytes:
        if self.complete:
            return b""
        self.complete = True
        out = b""
        if self.tool_calls:
            calls = [self.tool_calls[i] for i in sorted(self.tool_calls)]
            out += _ndjson(self._piece("", tool_calls=calls))
        final = self._piece("")
        stats = ollama_stats(self.usage, self.timings, time.perf_counter() - self.started)
        self.tokens = stats["eval_count"] or None
        self.prompt_tokens = stats["prompt_eval_count"] or None
        reason = "length" if self.finish_reason == "length" else "stop"
        final.update(done=True, done_reason=reason, **stats)
        return out + _ndjson(final)


class FromOllama(Translator):
    """An Ollama NDJSON stream in: each object, well typed by `chat_object`, goes to `_object`;
    an `{"error": ...}` object ends the stream with `_error`'s event instead."""

    def _line(self, line: bytes) -> bytes:
        if self.complete:
            return b""  # anything after the end
        raw = parse_object(line)
        if raw is None:
            return b""
        data = chat_object(raw)
        out = self._opening(data)
        if data["error"] is not None:
            self.error, self.complete = data["error"], True
            return out + self._error(data["error"])
        return out + self._object(raw, data)

    def _opening(self, data: dict[str, Any]) -> bytes:
        """What the client gets before the first object's events (nothing by default)."""
        return b""

    def _error(self, message: str) -> bytes:
        raise NotImplementedError

    def _object(self, raw: dict[str, Any], data: dict[str, Any]) -> bytes:
        raise NotImplementedError


class NdjsonToSse(FromOllama):
    """An Ollama server's NDJSON stream as OpenAI SSE (chat or completions)."""

    def __init__(self, op: str, model: str, include_usage: bool = False) -> None:
        super().__init__()
        self.op, self.model, self.include_usage = op, model, include_usage
        chat = op == "chat"
        self.id = new_id("chatcmpl" if chat else "cmpl")
        self.object = "chat.completion.chunk" if chat else "text_completion"
        self.created = int(time.time())
        self.role_sent = False
        self.saw_tool_calls = False

    def _error(self, message: str) -> bytes:
        return _sse(openai_error(500, message, "backend_error"))

    def _object(self, data: dict[str, Any], shaped: dict[str, Any]) -> bytes:
        out = b""
        if self.op == "chat":
            message = shaped["message"]
            delta: dict[str, Any] = {}
            if not self.role_sent:
                delta["role"] = "assistant"
                self.role_sent = True
            if message["content"]:
                delta["content"] = message["content"]
            if message["thinking"]:
                delta["reasoning_content"] = message["thinking"]
            if message["tool_calls"]:
                delta["tool_calls"] = openai_tool_calls(message["tool_calls"])
                self.saw_tool_calls = True
            if any(key != "role" for key in delta) or ("role" in delta and not shaped["done"]):
                out += _sse(self._chunk({"delta": delta, "finish_reason": None,
                                         "logprobs": logprobs_to_openai(shaped["logprobs"],
                                                                        True)}))
        elif _text(data.get("response")):
            out += _sse(self._chunk({"text": data["response"], "finish_reason": None,
                                     "logprobs": logprobs_to_openai(shaped["logprobs"],
                                                                    False)}))
        if shaped["done"]:
            reason = "tool_calls" if self.saw_tool_calls else finish_reason(data)
            ending = {"delta": {}} if self.op == "chat" else {"text": ""}
            out += _sse(self._chunk({**ending, "finish_reason": reason}))
            usage = openai_usage(data)
            self.tokens = usage["completion_tokens"] or None
            self.prompt_tokens = usage["prompt_tokens"] or None
            if self.include_usage:
                out += _sse({**self._chunk(None), "usage": usage})
            out += b"data: [DONE]\n\n"
            self.complete = True
        return out

    def _chunk(self, choice: dict[str, Any] | None) -> dict[str, Any]:
        choices = [] if choice is None else [{"index": 0, "logprobs": None, **choice}]
        return {"id": self.id, "object": self.object, "created": self.created,
                "model": self.model, "system_fingerprint": "sollol", "choices": choices}


class Chain:
    """Two translations in a row (an OpenAI SSE stream to NDJSON to a third dialect)."""

    at_boundary = True

    def __init__(self, first: Any, second: Any) -> None:
        self.first, self.second = first, second

    def feed(self, chunk: bytes) -> bytes:
        return self.second.feed(self.first.feed(chunk))

    def finish(self) -> bytes:
        return self.second.feed(self.first.finish()) + self.second.finish()

    @property
    def complete(self) -> bool:
        return bool(self.second.complete)

    @property
    def tokens(self) -> int | None:
        return self.second.tokens

    @property
    def prompt_tokens(self) -> int | None:
        return self.second.prompt_tokens

    @property
    def error(self) -> str | None:
        return self.first.error or self.second.error


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _ndjson(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"
