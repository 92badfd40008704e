"""OpenAI's Responses API (`POST /v1/responses`) to and from Ollama's `/api/chat`.

Stateless, as Ollama serves it: the whole conversation travels in `input` each time, so
`previous_response_id` and `conversation` are refused. Used for Ollama nodes; llama-server and
coordinators answer `/v1/responses` natively.
"""

from __future__ import annotations

import json
import time
from typing import Any

from sollol.dialects.jsonin import loads
from sollol.dialects.ollama_shape import chat_object
from sollol.dialects.replies import new_id
from sollol.errors import RequestError

_NODE = "an Ollama node"
# Responses' reasoning efforts -> Ollama's think levels ("none" turns thinking off).
_EFFORT = {"none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high",
           "xhigh": "max"}


def refuse_stateful(body: dict[str, Any]) -> None:
    """SOLLOL keeps no conversations: a request that points at stored state is refused."""
    for name in ("previous_response_id", "conversation"):
        if body.get(name) is not None:
            raise RequestError(f"field {name!r} is not supported: /v1/responses is stateless "
                               "here (as on Ollama); send the whole conversation in 'input'")
    if body.get("background") is True:
        raise RequestError("background responses are not supported: /v1/responses is "
                           "stateless here (as on Ollama), nothing is stored to poll later")


def responses_to_ollama(body: dict[str, Any]) -> dict[str, Any]:
    """An Ollama `/api/chat` body from a Responses request."""
    refuse_stateful(body)
    options: dict[str, Any] = {}
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            options[name] = body[name]
    if body.get("max_output_tokens"):
        options["num_predict"] = body["max_output_tokens"]
    out: dict[str, Any] = {"model": body["model"], "stream": bool(body.get("stream")),
                           "options": options}
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") is not None:
        effort = reasoning["effort"]
        if not isinstance(effort, str) or effort not in _EFFORT:
            raise RequestError(f"reasoning.effort {effort!r} is not one of "
                               f"{', '.join(_EFFORT)}")
        out["think"] = _EFFORT[effort]
    fmt = (body.get("text") or {}).get("format")
    fmt = fmt if isinstance(fmt, dict) else {}
    if fmt.get("type") == "json_object":
        out["format"] = "json"
    elif fmt.get("type") == "json_schema":
        out["format"] = fmt.get("schema") or "json"
    if body.get("top_logprobs"):
        out.update(logprobs=True, top_logprobs=body["top_logprobs"])
    messages: list[dict[str, Any]] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": str(body["instructions"])})
    messages += _items(body["input"])
    out["messages"] = messages
    tools = _tools(body.get("tools"), body.get("tool_choice"))
    if tools:
        out["tools"] = tools
    return out


def _items(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    messages: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # call_id -> function name
    thinking = ""
    for index, item in enumerate(value):
        where = f"input[{index}]"
        if not isinstance(item, dict):
            raise RequestError(f"{where} must be an object")
        kind = item.get("type") or "message"
        if kind == "message":
            message = _message(item, where)
            if thinking and message["role"] == "assistant":
                message["thinking"], thinking = thinking, ""
            messages.append(message)
        elif kind == "reasoning":
            parts = item.get("content") or item.get("summary") or []
            thinking += "".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))
        elif kind == "function_call":
            call_id, name = str(item.get("call_id", "")), str(item.get("name", ""))
            names[call_id] = name
            call = {"id": call_id, "function": {"name": name,
                                                "arguments": _arguments(item, where)}}
            last = messages[-1] if messages else None
            if last is None or last["role"] != "assistant" or last.get("content"):
                last = {"role": "assistant", "content": ""}
                messages.append(last)
            if thinking:
                last["thinking"], thinking = thinking, ""
            last.setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else _parts_text(output, where)
            call_id = str(item.get("call_id", ""))
            messages.append({"role": "tool", "content": text,
                             "tool_name": names.get(call_id, call_id)})
        else:
            raise RequestError(f"{where}: item type {kind!r} cannot be sent to {_NODE}")
    return messages


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise RequestError(f"{where}.role must be user, assistant, system or developer")
    out: dict[str, Any] = {"role": "system" if role == "developer" else role}
    content = item.get("content")
    if isinstance(content, str):
        out["content"] = content
        return out
    if not isinstance(content, list):
        raise RequestError(f"{where}.content must be a string or a list of parts")
    texts: list[str] = []
    for number, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text", "refusal"):
            texts.append(str(part.get("text") or part.get("refusal") or ""))
        elif kind == "input_image":
            url = part.get("image_url")
            if not (isinstance(url, str) and url.startswith("data:") and "," in url):
                raise RequestError(f"{where}.content[{number}]: only data: image URLs can be "
                                   f"sent to {_NODE} (the gateway does not fetch images)")
            out.setdefault("images", []).append(url.split(",", 1)[1])
        else:
            raise RequestError(f"{where}.content[{number}]: part type {kind!r} cannot be sent "
                               f"to {_NODE}")
    out["content"] = "".join(texts)
    return out


def _parts_text(parts: Any, where: str) -> str:
    if not isinstance(parts, list):
        raise RequestError(f"{where}.output must be a string or a list of text parts")
    return "".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))


def _arguments(item: dict[str, Any], where: str) -> Any:
    raw = item.get("arguments") or "{}"
    if not isinstance(raw, str):
        return raw
    try:
        return loads(raw)
    except ValueError:
        raise RequestError(f"{where}.arguments is not valid JSON") from None


def _tools(tools: Any, choice: Any) -> list[dict[str, Any]]:
    if not tools or choice == "none":
        return []
    if choice == "required" or (isinstance(choice, dict) and choice.get("type") == "function"):
        raise RequestError(f"tool_choice {choice!r} (forcing a tool call) cannot be expressed "
                           f"for {_NODE}; use auto")
    out = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise RequestError(f"tools[{index}]: tool type {kind!r} cannot run on {_NODE}; "
                               "only function tools")
        out.append({"type": "function", "function": {
            "name": tool.get("name", ""), "description": tool.get("description") or "",
            "parameters": tool.get("parameters") or {"type": "object", "properties": {}}}})
    return out


# ------------------------------------------------------------------ Ollama reply -> Responses


def output_items(message: dict[str, Any], logprobs: list[Any] | None = None,
                 ) -> list[dict[str, Any]]:
    """The `output` items for one chat message as `chat_object` gives it: reasoning, message,
    function calls."""
    items: list[dict[str, Any]] = []
    if message["thinking"]:
        items.append(reasoning_item(message["thinking"]))
    if message["content"] or not message["tool_calls"]:
        items.append(message_item(message["content"], logprobs))
    items += [function_call_item(call) for call in message["tool_calls"]]
    return items


def reasoning_item(text: str, item_id: str | None = None) -> dict[str, Any]:
    return {"type": "reasoning", "id": item_id or new_id("rs"), "summary": [],
            "content": [{"type": "reasoning_text", "text": text}]}


def message_item(text: str, logprobs: list[Any] | None = None, item_id: str | None = None,
                 status: str = "completed") -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [],
            "logprobs": responses_logprobs(logprobs)}
    return {"type": "message", "id": item_id or new_id("msg"), "status": status,
            "role": "assistant", "content": [part]}


def function_call_item(call: dict[str, Any], item_id: str | None = None) -> dict[str, Any]:
    """A `function_call` item from a tool call as `chat_object` gives it."""
    function = call["function"]
    return {"type": "function_call", "id": item_id or new_id("fc"),
            "call_id": call["id"] or new_id("call"), "name": function["name"],
            "arguments": json.dumps(function["arguments"], ensure_ascii=False),
            "status": "completed"}


def responses_logprobs(logprobs: list[Any] | None) -> list[dict[str, Any]]:
    """Ollama's per-token logprobs (as `chat_object` gives them) in the Responses shape."""
    return [{"token": p["token"], "logprob": p["logprob"], "bytes": p["bytes"],
             "top_logprobs": [{"token": t["token"], "logprob": t["logprob"], "bytes": t["bytes"]}
                              for t in p.get("top_logprobs") or []]}
            for p in logprobs or []]


def response_object(body: dict[str, Any], model: str, output: list[dict[str, Any]],
                    data: dict[str, Any] | None, status: str = "completed",
                    response_id: str | None = None, created: int | None = None,
                    ) -> dict[str, Any]:
    """A Responses `response` object (usage and status from Ollama's final object `data`, as
    `chat_object` gives it)."""
    incomplete = None
    if data is not None and data["done_reason"] == "length":
        status, incomplete = "incomplete", {"reason": "max_output_tokens"}
    prompt = data["prompt_eval_count"] if data else 0
    generated = data["eval_count"] if data else 0
    usage = None if data is None else {
        "input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": generated, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + generated}
    return {"id": response_id or new_id("resp"), "object": "response",
            "created_at": created or int(time.time()), "status": status, "error": None,
            "incomplete_details": incomplete, "model": model, "output": output,
            "instructions": body.get("instructions"), "metadata": body.get("metadata") or {},
            "parallel_tool_calls": True, "temperature": body.get("temperature"),
            "top_p": body.get("top_p"), "tool_choice": body.get("tool_choice") or "auto",
            "tools": body.get("tools") or [], "max_output_tokens": body.get("max_output_tokens"),
            "reasoning": body.get("reasoning"), "store": False, "truncation": "disabled",
            "text": body.get("text") or {"format": {"type": "text"}}, "usage": usage}


def ollama_reply_to_responses(body: dict[str, Any], data: dict[str, Any],
                              model: str) -> dict[str, Any]:
    """A whole Responses reply from an Ollama `/api/chat` reply."""
    data = chat_object(data)
    output = output_items(data["message"], data["logprobs"])
    return response_object(body, model, output, data)
