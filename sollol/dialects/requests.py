"""Rewrite a request body from one dialect to the other (Ollama native <-> OpenAI-compatible).

Only used when the client's dialect differs from the backend's; otherwise the client's bytes go
upstream untouched. Fields with no counterpart are dropped (documented in docs/gateway.md).
"""

from __future__ import annotations

import json
from typing import Any

from sollol.dialects import jsonin
from sollol.errors import RequestError

# Ollama `options` that OpenAI-compatible servers accept as top-level fields under the same name
# (the OpenAI ones, plus llama.cpp server extensions).
_SAME_NAME_OPTIONS = ("temperature", "top_p", "top_k", "min_p", "seed", "frequency_penalty",
                      "presence_penalty", "repeat_penalty", "repeat_last_n", "typical_p",
                      "mirostat", "mirostat_tau", "mirostat_eta", "tfs_z")
_OPENAI_NODE = "an OpenAI-compatible node (llama-server, vLLM)"
# OpenAI's reasoning_effort -> Ollama's think levels
_EFFORT_TO_THINK = {"none": False, "minimal": "low", "low": "low", "medium": "medium",
                    "high": "high", "xhigh": "max"}
_IMAGE_MAGIC = {"iVBOR": "image/png", "/9j/": "image/jpeg", "R0lGOD": "image/gif",
                "UklGR": "image/webp"}


# ------------------------------------------------------------------ Ollama client -> OpenAI server


def ollama_to_openai(op: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(path, body) for an OpenAI-compatible server, from an Ollama request."""
    model = body["model"]
    if op in ("embed", "embeddings"):
        text = body.get("input") if op == "embed" else body.get("prompt")
        out: dict[str, Any] = {"model": model, "input": "" if text is None else text,
                               "encoding_format": "float"}
        if body.get("dimensions") is not None:
            out["dimensions"] = body["dimensions"]
        return "/v1/embeddings", out
    stream = body.get("stream", True) is not False
    out = {"model": model, "stream": stream}
    if stream:
        out["stream_options"] = {"include_usage": True}
    out.update(_options_to_openai(body.get("options") or {}))
    out.update(_fields_to_openai(body, raw=op == "generate" and bool(body.get("raw"))))
    fmt = body.get("format")
    if fmt == "json":
        out["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        out["response_format"] = {"type": "json_schema",
                                  "json_schema": {"name": "response", "schema": fmt}}
    if op == "generate" and body.get("raw"):
        out["prompt"] = body.get("prompt") or ""
        if body.get("suffix"):
            out["suffix"] = body["suffix"]
        return "/v1/completions", out
    if op == "generate":
        messages: list[dict[str, Any]] = []
        if body.get("system"):
            messages.append({"role": "system", "content": body["system"]})
        messages.append(_message_to_openai({"role": "user", "content": body.get("prompt") or "",
                                            "images": body.get("images")}))
    else:
        messages = [_message_to_openai(m) for m in body.get("messages") or []]
        if body.get("tools"):
            out["tools"] = body["tools"]
    out["messages"] = messages
    return "/v1/chat/completions", out


def _fields_to_openai(body: dict[str, Any], raw: bool) -> dict[str, Any]:
    """Current Ollama's generation fields as an OpenAI-compatible server takes them, or a
    RequestError naming the node kind when the server has no way to honour one."""
    out: dict[str, Any] = {}
    think = body.get("think")
    if think is not None:
        if think == "max":
            raise RequestError(f"think 'max' cannot be expressed for {_OPENAI_NODE}: its "
                               "reasoning_effort goes up to 'high'")
        enabled = think is not False
        out["chat_template_kwargs"] = {"enable_thinking": enabled}
        if isinstance(think, str):
            out["reasoning_effort"] = think
    for name in ("truncate", "shift"):
        if body.get(name) is True:
            # llama-server refuses an over-long prompt and stops at a full context: it has
            # the behaviour of `false`, and no request field that turns on Ollama's `true`
            raise RequestError(f"{name}=true cannot be expressed for {_OPENAI_NODE} (it "
                               f"behaves as {name}=false); leave the field out or set false")
    top = body.get("top_logprobs")
    if body.get("logprobs") or top:
        if raw:
            out["logprobs"] = top or 1
        else:
            out["logprobs"] = True
            if top:
                out["top_logprobs"] = top
    return out


def _options_to_openai(options: dict[str, Any]) -> dict[str, Any]:
    out = {name: options[name] for name in _SAME_NAME_OPTIONS if name in options}
    predict = options.get("num_predict")
    if isinstance(predict, int) and predict > 0:
        out["max_tokens"] = predict
    if options.get("stop"):
        out["stop"] = options["stop"]
    return out


def _message_to_openai(message: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message["role"]}
    text = message.get("content") or ""
    images = message.get("images") or []
    if images:
        parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
        parts += [{"type": "image_url", "image_url": {"url": _data_url(i)}} for i in images]
        out["content"] = parts
    else:
        out["content"] = text
    if message.get("tool_calls"):
        out["tool_calls"] = [
            {"id": call.get("id") or f"call_{index}", "type": "function",
             "function": {"name": call.get("function", {}).get("name", ""),
                          "arguments": json.dumps(call.get("function", {}).get("arguments", {}))}}
            for index, call in enumerate(message["tool_calls"])
        ]
    if message["role"] == "tool":
        out["tool_call_id"] = message.get("tool_call_id") or message.get("tool_name") or ""
    if message.get("thinking") and message["role"] == "assistant":
        out["reasoning_content"] = message["thinking"]
    return out


def _data_url(image: str) -> str:
    if image.startswith("data:"):
        return image
    mime = next((m for prefix, m in _IMAGE_MAGIC.items() if image.startswith(prefix)),
                "image/png")
    return f"data:{mime};base64,{image}"


# ------------------------------------------------------------------ OpenAI client -> Ollama server


def openai_to_ollama(op: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(path, body) for an Ollama server, from an OpenAI request."""
    model = body["model"]
    if (body.get("n") or 1) != 1:
        raise RequestError("n > 1 is not supported when the backend is an Ollama node")
    if op == "embed":
        text = body["input"]
        if isinstance(text, list) and text and not isinstance(text[0], str):
            raise RequestError("token-array input is not supported when the backend is an "
                               "Ollama node; send text")
        out: dict[str, Any] = {"model": model, "input": text}
        if body.get("dimensions") is not None:
            out["dimensions"] = body["dimensions"]
        return "/api/embed", out
    out = {"model": model, "stream": bool(body.get("stream")), "options": _options_to_ollama(body)}
    effort = body.get("reasoning_effort")
    if effort is not None:
        if not isinstance(effort, str) or effort not in _EFFORT_TO_THINK:
            raise RequestError(f"reasoning_effort {effort!r} is not one of "
                               f"{', '.join(_EFFORT_TO_THINK)}")
        out["think"] = _EFFORT_TO_THINK[effort]
    top = body.get("top_logprobs")
    if body.get("logprobs") or top:
        out["logprobs"] = True
        legacy = body.get("logprobs")  # /v1/completions takes a count here
        count = legacy if op == "completions" and type(legacy) is int else top
        if count:
            out["top_logprobs"] = count
    response_format = body.get("response_format") or {}
    if response_format.get("type") == "json_object":
        out["format"] = "json"
    elif response_format.get("type") == "json_schema":
        out["format"] = (response_format.get("json_schema") or {}).get("schema") or "json"
    if op == "completions":
        prompt = body["prompt"]
        if isinstance(prompt, list):
            if len(prompt) != 1 or not isinstance(prompt[0], str):
                raise RequestError("only one text prompt per request is supported when the "
                                   "backend is an Ollama node")
            prompt = prompt[0]
        out.update(prompt=prompt, raw=True)
        if body.get("suffix"):
            out["suffix"] = body["suffix"]
        return "/api/generate", out
    out["messages"] = [_message_to_ollama(m, i) for i, m in enumerate(body["messages"])]
    if body.get("tools"):
        out["tools"] = body["tools"]
    return "/api/chat", out


def _options_to_ollama(body: dict[str, Any]) -> dict[str, Any]:
    options = {name: body[name] for name in _SAME_NAME_OPTIONS if body.get(name) is not None}
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit:
        options["num_predict"] = limit
    stop = body.get("stop")
    if stop:
        options["stop"] = [stop] if isinstance(stop, str) else stop
    return options


def _message_to_ollama(message: dict[str, Any], index: int) -> dict[str, Any]:
    role = "system" if message["role"] == "developer" else message["role"]
    out: dict[str, Any] = {"role": role}
    content = message.get("content")
    if isinstance(content, list):
        texts, images = [], []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                texts.append(str(part.get("text", "")))
            elif kind == "image_url":
                images.append(_image_to_base64(part.get("image_url"), index))
            else:
                raise RequestError(f"messages[{index}]: content part type {kind!r} is not "
                                   "supported when the backend is an Ollama node")
        out["content"] = "".join(texts)
        if images:
            out["images"] = images
    else:
        out["content"] = content or ""
    if message.get("tool_calls"):
        out["tool_calls"] = [_tool_call_to_ollama(c, index) for c in message["tool_calls"]]
    if role == "tool" and message.get("name"):
        out["tool_name"] = message["name"]
    if role == "assistant" and message.get("reasoning_content"):
        out["thinking"] = message["reasoning_content"]
    return out


def _image_to_base64(image: Any, index: int) -> str:
    url = image.get("url") if isinstance(image, dict) else image
    if isinstance(url, str) and url.startswith("data:") and "," in url:
        return url.split(",", 1)[1]
    raise RequestError(f"messages[{index}]: only data: image URLs can be sent to an Ollama node "
                       "(the gateway does not fetch remote images)")


def _tool_call_to_ollama(call: Any, index: int) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        raise RequestError(f"messages[{index}].tool_calls: each call needs a function object")
    arguments = function.get("arguments") or "{}"
    if isinstance(arguments, str):
        try:
            arguments = jsonin.loads(arguments)
        except ValueError:
            raise RequestError(f"messages[{index}].tool_calls: arguments are not valid JSON") \
                from None
    return {"function": {"name": function.get("name", ""), "arguments": arguments}}
