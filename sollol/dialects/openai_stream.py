"""An Ollama server's NDJSON stream as OpenAI SSE (chat or completions)."""

from __future__ import annotations

import time
from typing import Any

from sollol.dialects.error_shapes import openai_error
from sollol.dialects.replies import (
    finish_reason,
    logprobs_to_openai,
    new_id,
    openai_tool_calls,
    openai_usage,
)
from sollol.dialects.streams import FromOllama, as_text, sse_event


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
        return sse_event(openai_error(500, message, "backend_error"))

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
                out += sse_event(self._chunk({"delta": delta, "finish_reason": None,
                                         "logprobs": logprobs_to_openai(shaped["logprobs"],
                                                                        True)}))
        elif as_text(data.get("response")):
            out += sse_event(self._chunk({"text": data["response"], "finish_reason": None,
                                     "logprobs": logprobs_to_openai(shaped["logprobs"],
                                                                    False)}))
        if shaped["done"]:
            reason = "tool_calls" if self.saw_tool_calls else finish_reason(data)
            ending = {"delta": {}} if self.op == "chat" else {"text": ""}
            out += sse_event(self._chunk({**ending, "finish_reason": reason}))
            usage = openai_usage(data)
            self.tokens = usage["completion_tokens"] or None
            self.prompt_tokens = usage["prompt_tokens"] or None
            if self.include_usage:
                out += sse_event({**self._chunk(None), "usage": usage})
            out += b"data: [DONE]\n\n"
            self.complete = True
        return out

    def _chunk(self, choice: dict[str, Any] | None) -> dict[str, Any]:
        choices = [] if choice is None else [{"index": 0, "logprobs": None, **choice}]
        return {"id": self.id, "object": self.object, "created": self.created,
                "model": self.model, "system_fingerprint": "sollol", "choices": choices}
