"""Rewrite whole (non-streamed) replies and error bodies from one dialect to the other."""

from __future__ import annotations

import base64
import json
import secrets
import struct
import time
from datetime import UTC, datetime
from typing import Any

from sollol.dialects.jsonin import from_node
from sollol.dialects.ollama_shape import chat_object, count, logprob, text

_FINISH_TO_OLLAMA = {"stop": "stop", "length": "length", "tool_calls": "stop",
                     "function_call": "stop", "content_filter": "stop"}


def iso_now() -> str:
    """An RFC 3339 timestamp like Ollama's `created_at`."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def error_message(raw: bytes) -> str:
    """The human message inside an error body of either dialect (or the text itself)."""
    try:
        data = from_node(raw)
    except ValueError:
        return raw.decode("utf-8", "replace").strip()[:2000] or "(empty body)"
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error)
    if error is not None:
        return str(error)
    return json.dumps(data)[:2000]


# ------------------------------------------------------------------ OpenAI server -> Ollama client


def openai_reply_to_ollama(op: str, data: dict[str, Any], model: str, seconds: float,
                           raw_generate: bool = False) -> dict[str, Any]:
    """An Ollama reply for `op` from an OpenAI-compatible server's JSON reply."""
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    if op in ("embed", "embeddings"):
        vectors = [item["embedding"] for item in
                   sorted(data.get("data") or [], key=lambda item: item.get("index", 0))]
        if op == "embeddings":
            return {"embedding": vectors[0] if vectors else []}
        return {"model": model, "embeddings": vectors, "total_duration": _ns(seconds),
                "load_duration": 0, "prompt_eval_count": usage.get("prompt_tokens", 0)}
    # a field of the wrong JSON type counts as absent: an odd node's reply never crashes
    choices = data.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    choice = choice if isinstance(choice, dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    out: dict[str, Any] = {"model": model, "created_at": iso_now()}
    if op == "chat":
        calls = message.get("tool_calls")
        out["message"] = ollama_message(
            text(message.get("content")),
            [c for c in calls if isinstance(c, dict)] if isinstance(calls, list) else None,
            text(message.get("reasoning_content")))
    else:
        out["response"] = text(choice.get("text") if raw_generate else message.get("content"))
    logprobs = logprobs_to_ollama(choice.get("logprobs"))
    if logprobs:
        out["logprobs"] = logprobs
    reason = choice.get("finish_reason")
    out.update(done=True, done_reason=_FINISH_TO_OLLAMA.get(
        reason if isinstance(reason, str) else "stop", "stop"))
    out.update(ollama_stats(usage, data.get("timings"), seconds))
    return out


def logprobs_to_ollama(value: Any) -> list[dict[str, Any]]:
    """Ollama's `logprobs` list from an OpenAI choice's `logprobs` (chat's `content` list, or
    the legacy completions arrays)."""
    if not isinstance(value, dict):
        return []
    if isinstance(value.get("content"), list):
        entries = [logprob(p) for p in value["content"] if isinstance(p, dict)]
        for entry in entries:
            if not entry.get("top_logprobs"):
                entry.pop("top_logprobs", None)
        return entries
    tokens, values = value.get("tokens"), value.get("token_logprobs")
    if not isinstance(tokens, list) or not isinstance(values, list):
        return []
    return [{"token": text(t), "logprob": v if isinstance(v, int | float) else 0.0}
            for t, v in zip(tokens, values, strict=False)]


def logprobs_to_openai(value: Any, chat: bool) -> dict[str, Any] | None:
    """An OpenAI choice's `logprobs` from Ollama's `logprobs` list."""
    if not isinstance(value, list) or not value:
        return None
    entries = [p for p in value if isinstance(p, dict)]
    if chat:
        return {"content": [{"token": p.get("token", ""), "logprob": p.get("logprob", 0.0),
                             "bytes": p.get("bytes"),
                             "top_logprobs": [{"token": t.get("token", ""),
                                               "logprob": t.get("logprob", 0.0),
                                               "bytes": t.get("bytes")}
                                              for t in p.get("top_logprobs") or []]}
                            for p in entries]}
    return {"tokens": [p.get("token", "") for p in entries],
            "token_logprobs": [p.get("logprob", 0.0) for p in entries],
            "top_logprobs": [{t.get("token", ""): t.get("logprob", 0.0)
                              for t in p.get("top_logprobs") or []} for p in entries],
            "text_offset": []}


def ollama_message(content: Any, tool_calls: Any = None, thinking: Any = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content or ""}
    if thinking:
        message["thinking"] = thinking
    if tool_calls:
        message["tool_calls"] = []
        for call in tool_calls:
            function = call.get("function") if isinstance(call.get("function"), dict) else {}
            message["tool_calls"].append({"function": {
                "name": text(function.get("name")),
                "arguments": _arguments(function.get("arguments"))}})
    return message


def ollama_stats(usage: dict[str, Any], timings: dict[str, Any] | None,
                 seconds: float) -> dict[str, Any]:
    """Ollama's final-chunk counters, from OpenAI usage and llama.cpp's `timings` if present
    (a counter of the wrong JSON type counts as absent)."""
    timings = timings if isinstance(timings, dict) else {}
    usage = usage if isinstance(usage, dict) else {}
    prompt = usage.get("prompt_tokens", timings.get("prompt_n"))
    generated = usage.get("completion_tokens", timings.get("predicted_n"))
    return {
        "total_duration": _ns(seconds),
        "load_duration": 0,
        "prompt_eval_count": count(prompt),
        "prompt_eval_duration": _ns(_number(timings.get("prompt_ms")) / 1000),
        "eval_count": count(generated),
        "eval_duration": _ns(_number(timings.get("predicted_ms")) / 1000),
    }


def _number(value: Any) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
    return float(value) if ok and value < 1e15 else 0.0


def _arguments(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return from_node(value or "{}")
        except ValueError:
            return {"_raw": value}
    return value or {}


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


# ------------------------------------------------------------------ Ollama server -> OpenAI client


def ollama_reply_to_openai(op: str, data: dict[str, Any], model: str,
                           encoding: str = "float") -> dict[str, Any]:
    """An OpenAI reply for `op` from an Ollama server's JSON reply."""
    prompt_tokens = count(data.get("prompt_eval_count"))
    if op == "embed":
        vectors = data.get("embeddings")
        items = [{"object": "embedding", "index": i, "embedding": encode_vector(v, encoding)}
                 for i, v in enumerate(vectors if isinstance(vectors, list) else [])]
        return {"object": "list", "data": items, "model": model,
                "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
    finish = finish_reason(data)
    shaped = chat_object(data)  # fields of the wrong JSON type count as absent
    if op == "chat":
        message = shaped["message"]
        out_message: dict[str, Any] = {"role": "assistant", "content": message["content"]}
        if message["thinking"]:
            out_message["reasoning_content"] = message["thinking"]
        if message["tool_calls"]:
            out_message["tool_calls"] = openai_tool_calls(message["tool_calls"])
            finish = "tool_calls"
        choice: dict[str, Any] = {"index": 0, "message": out_message,
                                  "logprobs": logprobs_to_openai(shaped["logprobs"], True),
                                  "finish_reason": finish}
        kind, prefix = "chat.completion", "chatcmpl"
    else:
        choice = {"index": 0, "text": text(data.get("response")),
                  "logprobs": logprobs_to_openai(shaped["logprobs"], False),
                  "finish_reason": finish}
        kind, prefix = "text_completion", "cmpl"
    return {"id": new_id(prefix), "object": kind, "created": int(time.time()), "model": model,
            "system_fingerprint": "sollol", "choices": [choice], "usage": openai_usage(data)}


def openai_usage(data: dict[str, Any]) -> dict[str, int]:
    prompt, completion = count(data.get("prompt_eval_count")), count(data.get("eval_count"))
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def finish_reason(data: dict[str, Any]) -> str:
    return "length" if data.get("done_reason") == "length" else "stop"


def openai_tool_calls(calls: list[Any]) -> list[dict[str, Any]]:
    return [
        {"index": i, "id": c.get("id") or f"call_{i}", "type": "function",
         "function": {"name": (c.get("function") or {}).get("name", ""),
                      "arguments": json.dumps((c.get("function") or {}).get("arguments") or {})}}
        for i, c in enumerate(calls)
    ]


def encode_vector(vector: list[float], encoding: str) -> Any:
    """OpenAI's `encoding_format`: a float list, or base64 of little-endian float32s."""
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def load_reply(op: str, model: str, unload: bool = False) -> dict[str, Any]:
    """Ollama's answer to a request that only loads the model (or, with `keep_alive: 0`,
    only unloads it)."""
    out: dict[str, Any] = {"model": model, "created_at": iso_now()}
    if op == "chat":
        out["message"] = {"role": "assistant", "content": ""}
    else:
        out["response"] = ""
    return {**out, "done": True, "done_reason": "unload" if unload else "load"}


def show_from_info(info: Any, capabilities: list[str] | None = None) -> dict[str, Any]:
    """An Ollama `/api/show` reply built from GGUF metadata (for backends with no `/api/show`),
    with the `capabilities` the cluster knows for the model (else just "completion")."""
    arch = getattr(info, "architecture", None) or ""
    params = getattr(info, "parameter_count", None)
    details = {"parent_model": "", "format": "gguf", "family": arch,
               "families": [arch] if arch else None,
               "parameter_size": _human_count(params) if params else "",
               "quantization_level": getattr(info, "quantization", None) or ""}
    model_info: dict[str, Any] = {"general.architecture": arch}
    if params:
        model_info["general.parameter_count"] = params
    for key, attr in (("context_length", "context_length"), ("block_count", "layer_count"),
                      ("embedding_length", "embedding_length")):
        value = getattr(info, attr, None)
        if value is not None and arch:
            model_info[f"{arch}.{key}"] = value
    return {"modelfile": "", "parameters": "", "template": "", "details": details,
            "model_info": model_info, "capabilities": capabilities or ["completion"],
            "modified_at": iso_now()}


def show_with_capabilities(raw: bytes, capabilities: list[str] | None) -> bytes:
    """A node's own `/api/show` reply with its `capabilities` joined by what the cluster knows
    of the model on its other nodes (unchanged when the cluster knows nothing more)."""
    if not capabilities:
        return raw
    try:
        data = from_node(raw)
    except ValueError:
        return raw
    if not isinstance(data, dict):
        return raw
    own = data.get("capabilities")
    own = [str(w) for w in own] if isinstance(own, list) else []
    merged = capabilities + [w for w in own if w not in capabilities]
    if merged == own:
        return raw
    return json.dumps({**data, "capabilities": merged}).encode()


def _human_count(count: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.1f}{unit}".replace(".0", "")
    return str(count)
