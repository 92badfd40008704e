"""Responses API streams: an Ollama NDJSON stream as Responses events, and the completion of a
native stream whose events lack the indexes the official client needs.

Events (OpenAI's Responses streaming spec): `response.created`, `response.in_progress`, per
output item `response.output_item.added` ... `response.output_item.done` with the deltas of its
kind in between (`response.output_text.delta`, `response.reasoning_text.delta`,
`response.function_call_arguments.delta`), then `response.completed`.
Every event carries a `sequence_number`.
"""

from __future__ import annotations

import json
import time
from typing import Any

from sollol.dialects.lines import parse_object
from sollol.dialects.replies import new_id
from sollol.dialects.responses import (
    function_call_item,
    message_item,
    reasoning_item,
    response_object,
    responses_logprobs,
)
from sollol.dialects.streams import RESPONSES_ENDS, FromOllama, Translator, as_text, end_usage


def _event(data: dict[str, Any]) -> bytes:
    return (f"event: {data['type']}\ndata: ".encode()
            + json.dumps(data, ensure_ascii=False).encode() + b"\n\n")


class NdjsonToResponses(FromOllama):
    """Feed Ollama `/api/chat` NDJSON bytes, get Responses SSE bytes."""

    def __init__(self, body: dict[str, Any], model: str) -> None:
        super().__init__()
        self.body, self.model = body, model
        self.id = new_id("resp")
        self.created = 0
        self.sequence = 0
        self.output: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None  # the item receiving deltas

    def _emit(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return _event(data)

    def _opening(self, data: dict[str, Any]) -> bytes:
        if self.sequence:
            return b""
        self.created = int(time.time())
        snapshot = self._response(None, "in_progress")
        return (self._emit("response.created", response=snapshot)
                + self._emit("response.in_progress", response=snapshot))

    def _error(self, message: str) -> bytes:
        return self._emit("error", code="backend_error", message=message, param=None)

    def _object(self, raw: dict[str, Any], data: dict[str, Any]) -> bytes:
        out = b""
        message = data["message"]
        if message["thinking"]:
            out += self._delta("reasoning", message["thinking"])
        if message["content"]:
            out += self._delta("message", message["content"], data["logprobs"])
        for call in message["tool_calls"]:
            out += self._close()
            item = function_call_item(call)
            index = len(self.output)
            out += self._emit("response.output_item.added", output_index=index,
                              item={**item, "arguments": "", "status": "in_progress"})
            out += self._emit("response.function_call_arguments.delta", item_id=item["id"],
                              output_index=index, delta=item["arguments"])
            out += self._emit("response.function_call_arguments.done", item_id=item["id"],
                              output_index=index, name=item["name"],
                              arguments=item["arguments"])
            out += self._emit("response.output_item.done", output_index=index, item=item)
            self.output.append(item)
        if data["done"]:
            out += self._close()
            final = self._response(data, "completed")
            self.tokens = data["eval_count"] or None
            self.prompt_tokens = data["prompt_eval_count"] or None
            # `response.completed` also when the status is "incomplete" (a token limit), as
            # Ollama and llama-server send it: the official client's stream helper waits for it
            out += self._emit("response.completed", response=final)
            self.complete = True
        return out

    def _response(self, data: dict[str, Any] | None, status: str) -> dict[str, Any]:
        return response_object(self.body, self.model, list(self.output), data, status,
                               self.id, self.created)

    def _delta(self, kind: str, text: str, logprobs: list[Any] | None = None) -> bytes:
        out = b""
        if self.open is None or self.open["type"] != kind:
            out += self._close()
            index = len(self.output)
            if kind == "message":
                self.open = message_item("", status="in_progress")
                out += self._emit("response.output_item.added", output_index=index,
                                  item={**self.open, "content": []})
                out += self._emit("response.content_part.added", item_id=self.open["id"],
                                  output_index=index, content_index=0,
                                  part=self.open["content"][0])
            else:
                self.open = reasoning_item("")
                out += self._emit("response.output_item.added", output_index=index,
                                  item={**self.open, "content": []})
        index = len(self.output)
        part = self.open["content"][0]
        part["text"] += text
        if kind == "message":
            extra = responses_logprobs(logprobs)
            part["logprobs"] += extra
            return out + self._emit("response.output_text.delta", item_id=self.open["id"],
                                    output_index=index, content_index=0, delta=text,
                                    logprobs=extra)
        return out + self._emit("response.reasoning_text.delta", item_id=self.open["id"],
                                output_index=index, content_index=0, delta=text)

    def _close(self) -> bytes:
        item, self.open = self.open, None
        if item is None:
            return b""
        index = len(self.output)
        part = item["content"][0]
        if item["type"] == "message":
            item["status"] = "completed"
            out = self._emit("response.output_text.done", item_id=item["id"],
                             output_index=index, content_index=0, text=part["text"],
                             logprobs=part["logprobs"])
            out += self._emit("response.content_part.done", item_id=item["id"],
                              output_index=index, content_index=0, part=part)
        else:
            out = self._emit("response.reasoning_text.done", item_id=item["id"],
                             output_index=index, content_index=0, text=part["text"])
        self.output.append(item)
        return out + self._emit("response.output_item.done", output_index=index, item=item)


RESPONSE_STATUS = {"response.created": "in_progress", "response.in_progress": "in_progress",
                   "response.queued": "queued", "response.completed": "completed",
                   "response.incomplete": "incomplete", "response.failed": "failed"}
"""The events that carry the whole `response` object, and the status it has by default."""
TEXT_EVENTS = frozenset({"response.output_text.delta", "response.output_text.done"})


class CompleteResponsesEvents(Translator):
    """A native Responses stream, with `sequence_number`, `output_index` and `content_index`
    added where the server left them out (llama-server does; the official client's stream
    helper indexes by them), and every `response` object made whole: llama-server's
    `response.created` has no `output`, which the OpenAI JS library's stream helper iterates.
    Fields a server sent pass unchanged."""

    def __init__(self, body: dict[str, Any] | None = None, model: str = "") -> None:
        super().__init__()
        self.body, self.model = body or {}, model
        self.name = b""
        self.sequence = 0
        self.items: dict[str, int] = {}  # item id -> output index
        self.done: dict[int, dict[str, Any]] = {}  # output index -> finished item
        self.parts: set[tuple[str, int]] = set()  # (item id, content index) announced
        self.id = new_id("resp")
        self.created = int(time.time())

    def _line(self, line: bytes) -> bytes:
        if line.startswith(b"event:"):
            self.name = line
            return b""
        if not line.startswith(b"data:"):
            return b""
        name, self.name = self.name, b""
        data = parse_object(line[5:].strip())
        if data is None:
            return (name + b"\n" if name else b"") + line + b"\n\n"
        before = b"".join(_event(e) for e in self._missing(data))
        self._fill(data)
        kind = data.get("type")
        if isinstance(kind, str) and kind in RESPONSES_ENDS:
            self.complete = True
            self.tokens = end_usage(data).get("output_tokens")
            self.prompt_tokens = end_usage(data).get("input_tokens")
        elif kind == "error":
            self.complete = True
            self.error = str(data.get("message") or data.get("error"))
        head = name or f"event: {kind}".encode()
        return before + head + b"\ndata: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"

    def _fill(self, data: dict[str, Any]) -> None:
        data.setdefault("sequence_number", self.sequence)
        self.sequence += 1
        kind = data.get("type")
        if isinstance(kind, str) and kind in RESPONSE_STATUS:
            self._whole_response(data, kind)
            return
        item = data.get("item")
        item_id = item.get("id") if isinstance(item, dict) else data.get("item_id")
        if not isinstance(item_id, str) or not str(data.get("type", "")).startswith("response."):
            return
        if data["type"] == "response.output_item.added" and item_id not in self.items:
            self.items[item_id] = data.get("output_index", len(self.items))
        data.setdefault("output_index", self.items.get(item_id, len(self.items)))
        if "part" in data or "delta" in data or data["type"].endswith("text.done"):
            data.setdefault("content_index", 0)
        if data["type"] == "response.content_part.added" and isinstance(data["content_index"], int):
            self.parts.add((item_id, data["content_index"]))
        if data["type"] == "response.output_text.delta":
            data.setdefault("logprobs", [])
        index = data["output_index"]
        if data["type"] == "response.output_item.done" and isinstance(index, int):
            self.done[index] = item

    def _missing(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        """The events a text delta needs before it and the node did not send: the item's
        `output_item.added` and `content_part.added` (the stream helpers index into them)."""
        item_id = data.get("item_id")
        if as_text(data.get("type")) not in TEXT_EVENTS or not isinstance(item_id, str):
            return []
        out: list[dict[str, Any]] = []
        if item_id not in self.items:
            self.items[item_id] = len(self.items)
            out.append({"type": "response.output_item.added", "output_index": len(self.items) - 1,
                        "item": {"id": item_id, "type": "message", "role": "assistant",
                                 "status": "in_progress", "content": []}})
        content = data.get("content_index", 0)
        if isinstance(content, int) and (item_id, content) not in self.parts:
            self.parts.add((item_id, content))
            out.append({"type": "response.content_part.added", "item_id": item_id,
                        "output_index": self.items[item_id], "content_index": content,
                        "part": {"type": "output_text", "text": "", "annotations": [],
                                 "logprobs": []}})
        for event in out:
            event["sequence_number"] = self.sequence
            self.sequence += 1
        return out

    def _whole_response(self, data: dict[str, Any], kind: str) -> None:
        """Fill the `response` of a created/in_progress/completed event with what a whole
        response object has (its output: the items finished so far)."""
        response = data.get("response")
        if not isinstance(response, dict):
            response = data["response"] = {}
        if isinstance(response.get("id"), str):
            self.id = response["id"]
        if not isinstance(response.get("output"), list):
            response["output"] = [self.done[i] for i in sorted(self.done)]
        status = response.get("status")
        whole = response_object(self.body, self.model, response["output"], None,
                                status if isinstance(status, str) else RESPONSE_STATUS[kind],
                                self.id, self.created)
        for key, value in whole.items():
            if response.get(key) is None and value is not None:
                response[key] = value
            response.setdefault(key, value)
