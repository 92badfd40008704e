"""Anthropic's `POST /v1/messages/count_tokens`: counted by the node where it can, else estimated.

- llama-server (this project's build) serves the endpoint itself: the request is passed through,
  and its count is what its `/v1/messages` reports as `input_tokens` for the same request (its
  chat template, then its tokenizer): exact.
- An OpenAI-compatible server that does not (404/405/501): its `/apply-template`, then
  `/tokenize` of that prompt (older llama-server builds have both): exact too.
- Anything else (Ollama nodes, which have no tokenize endpoint; servers with neither):
  estimated (`sollol.dialects.token_estimate`).

Every answer says which: `exact` (true or false) and `method`, beside Anthropic's `input_tokens`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from sollol.dialects.anthropic import anthropic_to_ollama
from sollol.dialects.jsonin import from_node
from sollol.dialects.requests import ollama_to_openai
from sollol.dialects.token_estimate import METHOD, estimate
from sollol.forwarding.reply import NETWORK_ERRORS
from sollol.models import Api

if TYPE_CHECKING:
    from sollol.forwarding.calls import Call
    from sollol.forwarding.upstream import UpstreamPool

BY_NODE = "tokenizer: the node's own count (its chat template, then its tokenizer)"
BY_TEMPLATE = "tokenizer: the node's /apply-template, then its /tokenize"


def by_node(raw: bytes) -> bytes:
    """The node's own count_tokens answer, saying it is exact (untouched if it is no object)."""
    try:
        data = from_node(raw)
    except ValueError:
        return raw
    if not isinstance(data, dict):
        return raw
    return json.dumps({**data, "exact": True, "method": BY_NODE}).encode()


async def count_here(pool: UpstreamPool, root: str, authorization: bytes, call: Call,
                     backend_api: Api, deadline: float) -> dict[str, Any]:
    """The answer for a node that has no count_tokens endpoint."""
    chat = anthropic_to_ollama({**call.body, "max_tokens": 1})
    if backend_api == "openai":
        counted = await _by_template(pool, root, authorization, chat, deadline)
        if counted is not None:
            return {"input_tokens": counted, "exact": True, "method": BY_TEMPLATE}
    return {"input_tokens": estimate(chat), "exact": False, "method": METHOD}


async def _by_template(pool: UpstreamPool, root: str, authorization: bytes,
                       chat: dict[str, Any], deadline: float) -> int | None:
    """llama-server's own count: the prompt its chat template makes, tokenized; None when the
    server lacks either endpoint or fails."""
    _path, body = ollama_to_openai("chat", {**chat, "stream": False})
    template = {"messages": body["messages"], **({"tools": body["tools"]}
                                                 if body.get("tools") else {})}
    prompt = await _ask(pool, root, "/apply-template", template, authorization, deadline)
    text = prompt.get("prompt") if prompt else None
    if not isinstance(text, str):
        return None
    tokens = await _ask(pool, root, "/tokenize", {"content": text, "add_special": True,
                                                  "parse_special": True},
                        authorization, deadline)
    found = tokens.get("tokens") if tokens else None
    return len(found) if isinstance(found, list) else None


async def _ask(pool: UpstreamPool, root: str, path: str, body: dict[str, Any],
               authorization: bytes, deadline: float) -> dict[str, Any] | None:
    try:
        response = await pool.post(root, path, json.dumps(body).encode(), deadline,
                                   authorization)
        try:
            raw = await response.read()
        finally:
            response.release()
        data = from_node(raw) if response.status == 200 else None
    except (*NETWORK_ERRORS, ValueError):
        return None
    return data if isinstance(data, dict) else None
