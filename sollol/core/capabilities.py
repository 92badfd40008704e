"""What a request needs from a backend, and how to tell a backend's "I can't" from a failure.

Backends report what they can do (llama-server's `/props`, Ollama's `/api/show`
`capabilities`), and say so when asked for something they cannot do (llama-server answers 501
`not_supported_error` to an embedding request without `--embeddings`; Ollama answers 400
`"x" does not support chat`). Such an answer is a missing capability, never a health failure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from sollol.core.names import spellings
from sollol.dialects.jsonin import from_node
from sollol.models import RouteState

COMPLETION = "completion"
CHAT = "chat"
EMBEDDING = "embedding"
VISION = "vision"
TOOLS = "tools"
ALL = (COMPLETION, CHAT, EMBEDDING, VISION, TOOLS)

CHAT_OPS = ("chat", "messages", "responses")
"""Operations that hold a conversation (OpenAI and Ollama chat, Anthropic messages, responses)."""
_IMAGE_PARTS = ("image_url", "input_image", "image")

WORDS = {COMPLETION: "text completion", CHAT: "chat", EMBEDDING: "embeddings",
         VISION: "images (vision)", TOOLS: "tool calls"}
"""How an error message names each capability."""

_UNSUPPORTED = re.compile(r"not[ _]supported|does not support|not support"
                          r"|not (?:oai|openai)[ -]compatible", re.IGNORECASE)
"""Answers meaning "this server cannot do that" (llama-server says a pooling type `none` is
"not OAI compatible": it computes no OpenAI embeddings)."""
_EMBED_WORDS = re.compile(r"embedding|pooling", re.IGNORECASE)
_CHAT_WORDS = re.compile(r"\bchat\b|template", re.IGNORECASE)
_VISION_WORDS = re.compile(r"image|vision|multimodal|mmproj", re.IGNORECASE)
_TOOL_WORDS = re.compile(r"\btools?\b|tool.call|function", re.IGNORECASE)
_COMPLETION_WORDS = re.compile(r"generat|completion", re.IGNORECASE)


def needs(op: str, body: Mapping[str, Any]) -> frozenset[str]:
    """The capabilities a request for `op` with this body needs from the backend."""
    if op in ("embed", "embeddings"):
        return frozenset({EMBEDDING})
    if op in ("show", "count_tokens"):  # any node holding the model can answer these
        return frozenset()
    found = {COMPLETION}
    if op in CHAT_OPS:
        found.add(CHAT)
        if body.get("tools"):
            found.add(TOOLS)
        turns = body.get("input") if op == "responses" else body.get("messages")
        if _has_images(turns):
            found.add(VISION)
    elif body.get("images"):
        found.add(VISION)
    return frozenset(found)


def _has_images(messages: Any) -> bool:
    if not isinstance(messages, list):
        return False
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        if message.get("images"):
            return True
        content = message.get("content")
        if isinstance(content, list) and any(
                isinstance(part, Mapping) and part.get("type") in _IMAGE_PARTS
                for part in content):
            return True
    return False


def unsupported(status: int, raw: bytes, wanted: frozenset[str]) -> str | None:
    """The capability an error answer says the backend lacks, or None for any other error.

    501 is "not implemented" by definition; a 4xx counts only when its message says the
    feature is unsupported (a 400 for a bad field is the client's problem, not a capability).
    """
    if status < 400 or status in (408, 413, 429) or (status >= 500 and status != 501):
        return None
    text = _message(raw)
    if status != 501 and not _UNSUPPORTED.search(text):
        return None
    for capability, words in ((EMBEDDING, _EMBED_WORDS), (VISION, _VISION_WORDS),
                              (TOOLS, _TOOL_WORDS), (CHAT, _CHAT_WORDS),
                              (COMPLETION, _COMPLETION_WORDS)):
        if capability in wanted and words.search(text):
            return capability
    if status != 501:
        return None  # unsupported, but not something we route by (e.g. "thinking"): a 4xx
    # "not implemented" without naming what: blame the most specific thing the request needed
    for capability in (EMBEDDING, VISION, TOOLS, CHAT, COMPLETION):
        if capability in wanted:
            return capability
    return None


def _message(raw: bytes) -> str:
    try:
        data = from_node(raw)
    except (ValueError, UnicodeDecodeError):
        return raw[:500].decode("utf-8", "replace")
    if isinstance(data, Mapping):
        error = data.get("error", data)
        if isinstance(error, Mapping):
            return f"{error.get('type', '')} {error.get('message', '')}"
        return str(error)
    return str(data)


def describe(capabilities: frozenset[str]) -> str:
    """Capabilities in words, e.g. "embeddings" or "chat and tool calls"."""
    words = [WORDS.get(c, c) for c in ALL if c in capabilities]
    words += sorted(c for c in capabilities if c not in WORDS)
    return " and ".join(words) if words else "nothing"


OLLAMA_ORDER = (COMPLETION, TOOLS, "insert", VISION, EMBEDDING, "thinking")
"""Ollama's capability words in the order its `/api/show` lists them."""


def ollama_words(found: frozenset[str], server: str) -> frozenset[str]:
    """One backend's capabilities in Ollama's words: "chat" has none (a "completion" model
    chats); an Ollama node's "completion" model embeds, but Ollama calls a model "embedding"
    only when embeddings are what it is for, so that word stays as the node said it."""
    words = set(found) - {CHAT}
    if server == "ollama" and COMPLETION in found:
        words.discard(EMBEDDING)
    return frozenset(words)


def cluster_words(states: Iterable[RouteState], model: str) -> list[str] | None:
    """What the healthy backends that hold `model` can do with it, merged, in Ollama's words
    and order (`/api/show` `capabilities`); None when none of them says."""
    names = spellings(model)
    words: set[str] = set()
    known = False
    for state in states:
        for backend in state.backends:
            if not (backend.healthy and names & backend.models):
                continue
            found = next((backend.capabilities[n] for n in sorted(names)
                          if n in backend.capabilities), backend.capabilities.get(""))
            if found is None:
                continue
            lacks = frozenset().union(*(backend.lacks.get(n, frozenset()) for n in {"", *names}))
            known = True
            words |= ollama_words(found - lacks, backend.server)
    if not known:
        return None
    return [w for w in OLLAMA_ORDER if w in words] + sorted(words - set(OLLAMA_ORDER))
