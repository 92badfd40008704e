"""Ollama chat objects (whole replies and stream chunks) reduced to the shape the Anthropic and
Responses translators read, whatever a node sent: a field of the wrong JSON type counts as
absent, so an odd node answer is translated as far as it makes sense and never crashes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sollol.dialects.jsonin import from_node


def text(value: Any) -> str:
    """A string field: strings as they are, numbers as text, anything else empty."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return ""


def count(value: Any) -> int:
    """A token counter: a non-negative integer, else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def tool_call(call: Mapping[str, Any]) -> dict[str, Any]:
    """`{"id", "function": {"name", "arguments"}}` with arguments as an object."""
    function = call.get("function") if isinstance(call.get("function"), dict) else {}
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = from_node(arguments or "{}")
        except ValueError:
            arguments = {"_raw": arguments}
    if not isinstance(arguments, dict):
        arguments = {} if arguments is None else {"_value": arguments}
    return {"id": text(call.get("id")),
            "function": {"name": text(function.get("name")), "arguments": arguments}}


def logprob(entry: Mapping[str, Any]) -> dict[str, Any]:
    value = entry.get("logprob")
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else 0.0
    raw = entry.get("bytes")
    data = [b for b in raw if isinstance(b, int) and not isinstance(b, bool)] \
        if isinstance(raw, list) else []
    out = {"token": text(entry.get("token")), "logprob": number, "bytes": data}
    if "top_logprobs" in entry:
        out["top_logprobs"] = [logprob(t) for t in _dicts(entry.get("top_logprobs"))]
    return out


def chat_object(data: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of an Ollama `/api/chat` object that translations use, well typed."""
    message = data.get("message") if isinstance(data.get("message"), dict) else {}
    reason = data.get("done_reason")
    return {
        "message": {"content": text(message.get("content")),
                    "thinking": text(message.get("thinking")),
                    "tool_calls": [tool_call(c) for c in _dicts(message.get("tool_calls"))]},
        "done": data.get("done") is True,
        "done_reason": reason if isinstance(reason, str) else None,
        "prompt_eval_count": count(data.get("prompt_eval_count")),
        "eval_count": count(data.get("eval_count")),
        "logprobs": [logprob(p) for p in _dicts(data.get("logprobs"))],
        "error": None if data.get("error") is None else str(data["error"]),
    }
