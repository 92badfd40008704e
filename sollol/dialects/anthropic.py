"""Anthropic's Messages API (`POST /v1/messages`) to and from Ollama's `/api/chat`.

Used for nodes that do not answer `/v1/messages` themselves (Ollama nodes; llama-server and
coordinators take it natively). What has no Ollama counterpart is refused with a RequestError
naming the node kind, never dropped silently.
"""

from __future__ import annotations

from typing import Any

from sollol.dialects.ollama_shape import chat_object
from sollol.dialects.replies import new_id
from sollol.errors import RequestError

_NODE = "an Ollama node"
_ROLES = ("user", "assistant")
# output_config.effort -> Ollama's think levels
_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "max", "max": "max"}


def think_from_thinking(thinking: Any) -> bool | None:
    """Ollama's `think` for Anthropic's `thinking` config (budgets have no Ollama counterpart:
    the model thinks as long as it needs)."""
    if not isinstance(thinking, dict):
        return None
    kind = thinking.get("type")
    if kind in ("enabled", "adaptive"):
        return True
    if kind == "disabled":
        return False
    raise RequestError(f"thinking.type must be enabled, adaptive or disabled, not {kind!r}")


def anthropic_to_ollama(body: dict[str, Any]) -> dict[str, Any]:
    """An Ollama `/api/chat` body from an Anthropic Messages request."""
    if body.get("mcp_servers"):
        raise RequestError(f"mcp_servers cannot be used with {_NODE}: the API itself would "
                           "have to run them; connect the MCP servers in the client instead")
    options: dict[str, Any] = {"num_predict": body["max_tokens"]}
    for name in ("temperature", "top_p", "top_k"):
        if body.get(name) is not None:
            options[name] = body[name]
    if body.get("stop_sequences"):
        options["stop"] = list(body["stop_sequences"])
    out: dict[str, Any] = {"model": body["model"], "stream": bool(body.get("stream")),
                           "options": options}
    think = think_from_thinking(body.get("thinking"))
    if think is not None:
        out["think"] = think
    out.update(_output_config(body.get("output_config")))
    messages: list[dict[str, Any]] = []
    system = _text_of(body.get("system"), "system")
    if system:
        messages.append({"role": "system", "content": system})
    names: dict[str, str] = {}  # tool_use id -> tool name, for tool results
    for index, message in enumerate(body["messages"]):
        messages += _message(message, index, names)
    out["messages"] = messages
    tools = _tools(body.get("tools"), body.get("tool_choice"))
    if tools:
        out["tools"] = tools
    return out


def _output_config(config: Any) -> dict[str, Any]:
    """`output_config`: an effort becomes Ollama's think level, a JSON schema its `format`."""
    if not isinstance(config, dict):
        return {}
    out: dict[str, Any] = {}
    effort = config.get("effort")
    if effort is not None:
        if not isinstance(effort, str) or effort not in _EFFORTS:
            raise RequestError(f"output_config.effort must be one of {', '.join(_EFFORTS)}")
        out["think"] = _EFFORTS[effort]
    fmt = config.get("format")
    if fmt is not None:
        if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
            raise RequestError("output_config.format must be {\"type\": \"json_schema\", "
                               "\"schema\": {...}}")
        out["format"] = fmt.get("schema") if isinstance(fmt.get("schema"), dict) else "json"
    return out


def _text_of(value: Any, where: str) -> str:
    """A string, or the text of a list of text blocks (system prompts, tool results)."""
    if value is None or isinstance(value, str):
        return value or ""
    if isinstance(value, list):
        texts = []
        for block in value:
            if not isinstance(block, dict) or block.get("type") != "text":
                kind = block.get("type") if isinstance(block, dict) else type(block).__name__
                raise RequestError(f"{where}: only text blocks can be sent to {_NODE}, "
                                   f"not {kind!r}")
            texts.append(str(block.get("text", "")))
        return "\n".join(texts)
    raise RequestError(f"{where} must be a string or a list of text blocks")


def _message(message: dict[str, Any], index: int, names: dict[str, str]) -> list[dict[str, Any]]:
    role = message.get("role")
    where = f"messages[{index}]"
    if role not in _ROLES:
        raise RequestError(f"{where}.role must be user or assistant, not {role!r}")
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise RequestError(f"{where}.content must be a string or a list of content blocks")
    results: list[dict[str, Any]] = []
    out: dict[str, Any] = {"role": role, "content": ""}
    texts: list[str] = []
    for number, block in enumerate(content):
        spot = f"{where}.content[{number}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "image":
            out.setdefault("images", []).append(_image(block, spot))
        elif kind == "thinking":
            out["thinking"] = out.get("thinking", "") + str(block.get("thinking", ""))
        elif kind == "redacted_thinking":
            continue  # encrypted by another provider: nothing a local model can read
        elif kind == "tool_use" and role == "assistant":
            call_id, name = str(block.get("id", "")), str(block.get("name", ""))
            names[call_id] = name
            arguments = block.get("input") if isinstance(block.get("input"), dict) else {}
            out.setdefault("tool_calls", []).append(
                {"id": call_id, "function": {"name": name, "arguments": arguments}})
        elif kind == "tool_result" and role == "user":
            result = _text_of(block.get("content"), f"{spot}.content")
            if block.get("is_error"):
                result = f"error: {result}"
            tool_id = str(block.get("tool_use_id", ""))
            results.append({"role": "tool", "content": result,
                            "tool_name": names.get(tool_id, tool_id)})
        else:
            raise RequestError(f"{spot}: content block type {kind!r} cannot be sent to {_NODE}"
                               f" (on the {role} side)")
    out["content"] = "".join(texts)
    keep = out["content"] or any(k in out for k in ("images", "tool_calls", "thinking"))
    return results + ([out] if keep or not results else [])


def _image(block: dict[str, Any], spot: str) -> str:
    source = block.get("source") if isinstance(block.get("source"), dict) else {}
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        return source["data"]
    raise RequestError(f"{spot}: only base64 images can be sent to {_NODE} (the gateway does "
                       f"not fetch {source.get('type')!r} image sources)")


def _tools(tools: Any, choice: Any) -> list[dict[str, Any]]:
    if not tools:
        return []
    if not isinstance(tools, list):
        raise RequestError("field 'tools' must be a list")
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "none":
        return []
    if kind in ("any", "tool"):
        raise RequestError(f"tool_choice {kind!r} (forcing a tool call) cannot be expressed for "
                           f"{_NODE}; use auto")
    out = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise RequestError(f"tools[{index}] must be an object with a name")
        if tool.get("type") not in (None, "custom"):
            raise RequestError(f"tools[{index}]: server tool {tool.get('type')!r} cannot run on "
                               f"{_NODE}; only client tools with an input_schema")
        out.append({"type": "function", "function": {
            "name": tool["name"], "description": tool.get("description", ""),
            "parameters": tool.get("input_schema") or {"type": "object", "properties": {}}}})
    return out


# ------------------------------------------------------------------ Ollama reply -> Anthropic


def stop_reason(data: dict[str, Any], tool_calls: bool) -> str:
    """Anthropic's `stop_reason` for Ollama's final object."""
    if tool_calls:
        return "tool_use"
    return "max_tokens" if data.get("done_reason") == "length" else "end_turn"


def tool_use_block(call: dict[str, Any]) -> dict[str, Any]:
    """A `tool_use` block from a tool call as `chat_object` gives it."""
    function = call["function"]
    return {"type": "tool_use", "id": call["id"] or new_id("toolu").replace("-", "_"),
            "name": function["name"], "input": function["arguments"]}


def usage(data: dict[str, Any]) -> dict[str, int]:
    return {"input_tokens": data["prompt_eval_count"], "output_tokens": data["eval_count"]}


def ollama_reply_to_anthropic(data: dict[str, Any], model: str) -> dict[str, Any]:
    """An Anthropic `message` from an Ollama `/api/chat` reply."""
    data = chat_object(data)
    message = data["message"]
    content: list[dict[str, Any]] = []
    if message.get("thinking"):
        content.append({"type": "thinking", "thinking": message["thinking"], "signature": ""})
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    calls = message.get("tool_calls") or []
    content += [tool_use_block(call) for call in calls]
    return {"id": new_id("msg").replace("-", "_"), "type": "message", "role": "assistant",
            "model": model, "content": content, "stop_reason": stop_reason(data, bool(calls)),
            "stop_sequence": None, "usage": usage(data)}
