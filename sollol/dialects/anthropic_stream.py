"""An Ollama `/api/chat` NDJSON stream as Anthropic's Messages stream events.

Event order (Anthropic's "Streaming messages" spec): `message_start`, then per content block
`content_block_start`, `content_block_delta`s, `content_block_stop`; then `message_delta` (stop
reason, output tokens) and `message_stop`. An error ends the stream with an `error` event.
"""

from __future__ import annotations

import json
from typing import Any

from sollol.dialects.anthropic import stop_reason, tool_use_block, usage
from sollol.dialects.error_shapes import anthropic_error
from sollol.dialects.lines import parse_object
from sollol.dialects.passthrough import Passthrough
from sollol.dialects.replies import new_id
from sollol.dialects.streams import FromOllama, as_mapping


def event(name: str, data: dict[str, Any]) -> bytes:
    """One server-sent event with Anthropic's `event:` name."""
    return (f"event: {name}\ndata: ".encode() + json.dumps(data, ensure_ascii=False).encode()
            + b"\n\n")


def message_start(model: str, input_tokens: int) -> bytes:
    """The event that opens every Messages stream."""
    message = {"id": new_id("msg").replace("-", "_"), "type": "message",
               "role": "assistant", "model": model, "content": [],
               "stop_reason": None, "stop_sequence": None,
               "usage": {"input_tokens": input_tokens, "output_tokens": 0}}
    return event("message_start", {"type": "message_start", "message": message})


class AnthropicPassthrough(Passthrough):
    """A node's own Messages stream, forwarded untouched, except that a stream whose first
    event is not `message_start` gets one: llama-server (this project's build) drops it when
    the first generated token is an incomplete UTF-8 sequence, and Anthropic clients cannot
    read a stream without it."""

    HOLD_LIMIT = 64 * 1024  # never hold more than this while looking for the first event

    def __init__(self, model: str) -> None:
        super().__init__(sse=True)
        self.model = model
        self.held = b""
        self.checked = False

    def feed(self, chunk: bytes) -> bytes:
        chunk = super().feed(chunk)
        if self.checked:
            return chunk
        self.held += chunk
        name = _first_event(self.held)
        if name is None and len(self.held) < self.HOLD_LIMIT:
            return b""  # the first event's name has not arrived whole yet
        self.checked = True
        held, self.held = self.held, b""
        if name in (None, b"message_start", b"error"):
            return held
        return message_start(self.model, 0) + held

    def finish(self) -> bytes:
        held, self.held = self.held, b""
        return held

    def _lines(self, head: bytes) -> None:
        """Anthropic's counts: `input_tokens` in `message_start`, `output_tokens` in the
        `message_delta` before `message_stop` (which carries none)."""
        if b'"usage"' not in head:
            return
        for line in head.split(b"\n"):
            if not line.startswith(b"data:") or b'"usage"' not in line:
                continue
            data = parse_object(line.removeprefix(b"data:"))
            kind = data.get("type") if data else None
            if kind == "message_start":
                found = as_mapping(as_mapping(data.get("message")).get("usage"))
            elif kind == "message_delta":
                found = as_mapping(data.get("usage"))
            else:
                continue
            if _count(found.get("input_tokens")) is not None:
                self.prompt_tokens = found["input_tokens"]
            if kind == "message_delta" and _count(found.get("output_tokens")) is not None:
                self.tokens = found["output_tokens"]

    @property
    def at_boundary(self) -> bool:
        # while the start is held nothing has reached the client: an error event cutting the
        # stream now is its first line (the held partial line is dropped with the stream)
        return not self.checked or super().at_boundary


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 \
        else None


def _first_event(data: bytes) -> bytes | None:
    """The name of the first event in SSE bytes (`event:` line, else the `data:` type), or
    None until its line is complete."""
    for line in data.split(b"\n")[:-1]:  # complete lines only
        text = line.strip()
        if not text or text.startswith(b":"):
            continue
        if text.startswith(b"event:"):
            return text.removeprefix(b"event:").strip()
        kind = parse_object(text.removeprefix(b"data:"))
        return str((kind or {}).get("type", "")).encode()
    return None


class NdjsonToAnthropic(FromOllama):
    """Feed Ollama NDJSON bytes, get Anthropic SSE bytes."""

    def __init__(self, model: str) -> None:
        super().__init__()
        self.model = model
        self.started = False
        self.block: str | None = None  # the open block's type: "text" or "thinking"
        self.index = -1
        self.saw_tools = False

    def _error(self, message: str) -> bytes:
        return event("error", anthropic_error(500, message))

    def _object(self, raw: dict[str, Any], data: dict[str, Any]) -> bytes:
        out = b""
        message = data["message"]
        if message["thinking"]:
            out += self._delta("thinking", {"type": "thinking_delta",
                                            "thinking": message["thinking"]})
        if message["content"]:
            out += self._delta("text", {"type": "text_delta", "text": message["content"]})
        for call in message["tool_calls"]:
            out += self._close()
            block = tool_use_block(call)
            self.saw_tools = True
            self.index += 1
            arguments = json.dumps(block["input"], ensure_ascii=False)
            out += event("content_block_start", {"type": "content_block_start",
                                                 "index": self.index,
                                                 "content_block": {**block, "input": {}}})
            out += event("content_block_delta", {
                "type": "content_block_delta", "index": self.index,
                "delta": {"type": "input_json_delta", "partial_json": arguments}})
            out += event("content_block_stop", {"type": "content_block_stop",
                                                "index": self.index})
        if data["done"]:
            out += self._close()
            counts = usage(data)
            self.tokens = counts["output_tokens"] or None
            self.prompt_tokens = counts["input_tokens"] or None
            out += event("message_delta", {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason(data, self.saw_tools),
                          "stop_sequence": None},
                "usage": counts})
            out += event("message_stop", {"type": "message_stop"})
            self.complete = True
        return out

    def _opening(self, data: dict[str, Any]) -> bytes:
        if self.started:
            return b""
        self.started = True
        return message_start(self.model, data["prompt_eval_count"])

    def _delta(self, kind: str, delta: dict[str, Any]) -> bytes:
        out = b""
        if self.block != kind:
            out += self._close()
            self.index += 1
            self.block = kind
            empty = {"type": "text", "text": ""} if kind == "text" else {
                "type": "thinking", "thinking": "", "signature": ""}
            out += event("content_block_start", {"type": "content_block_start",
                                                 "index": self.index, "content_block": empty})
        return out + event("content_block_delta", {"type": "content_block_delta",
                                                   "index": self.index, "delta": delta})

    def _close(self) -> bytes:
        if self.block is None:
            return b""
        self.block = None
        return event("content_block_stop", {"type": "content_block_stop", "index": self.index})
