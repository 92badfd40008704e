"""An OpenAI-compatible server's SSE stream as Ollama NDJSON (chat or generate)."""

from __future__ import annotations

import time
from typing import Any

from sollol.dialects.lines import parse_object
from sollol.dialects.replies import iso_now, logprobs_to_ollama, ollama_message, ollama_stats
from sollol.dialects.streams import Translator, as_mapping, as_text, error_text, ndjson_line


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
            return ndjson_line({"error": self.error})
        # a field of the wrong JSON type counts as absent: an odd node never crashes the stream
        self.usage = as_mapping(data.get("usage")) or self.usage
        self.timings = as_mapping(data.get("timings")) or self.timings
        out = b""
        choices = data.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if not isinstance(choice, dict):
                continue
            reason = choice.get("finish_reason")
            self.finish_reason = reason if isinstance(reason, str) else self.finish_reason
            if self.op == "chat" or not self.raw_generate:
                delta = as_mapping(choice.get("delta"))
                calls = delta.get("tool_calls")
                for call in calls if isinstance(calls, list) else []:
                    if isinstance(call, dict):
                        self._merge_tool_call(call)
                text = as_text(delta.get("content"))
                thinking = as_text(delta.get("reasoning_content"))
            else:
                text, thinking = as_text(choice.get("text")), None
            if text or thinking:
                piece = self._piece(text or "", thinking)
                logprobs = logprobs_to_ollama(choice.get("logprobs"))
                if logprobs:
                    piece["logprobs"] = logprobs
                out += ndjson_line(piece)
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
        slot["id"] = as_text(call.get("id")) or slot["id"]
        function = as_mapping(call.get("function"))
        slot["function"]["name"] += as_text(function.get("name"))
        slot["function"]["arguments"] += as_text(function.get("arguments"))

    def _done(self) -> bytes:
        if self.complete:
            return b""
        self.complete = True
        out = b""
        if self.tool_calls:
            calls = [self.tool_calls[i] for i in sorted(self.tool_calls)]
            out += ndjson_line(self._piece("", tool_calls=calls))
        final = self._piece("")
        stats = ollama_stats(self.usage, self.timings, time.perf_counter() - self.started)
        self.tokens = stats["eval_count"] or None
        self.prompt_tokens = stats["prompt_eval_count"] or None
        reason = "length" if self.finish_reason == "length" else "stop"
        final.update(done=True, done_reason=reason, **stats)
        return out + ndjson_line(final)
