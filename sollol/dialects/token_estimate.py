"""An estimate of a chat request's prompt tokens, for nodes that cannot count them (Ollama has no
tokenize endpoint).

The rule: one token per `CHARS_PER_TOKEN` characters of what the model reads (the system prompt,
each message's text, thinking and tool calls, the tools' names, descriptions and schemas as
JSON), plus `PER_MESSAGE` tokens for each message's role markers and `PRIMING` for the
assistant turn the template opens. Against Llama 3's tokenizer it came within about 20% on long
English, German, code and JSON requests (docs/gateway.md, "Counting tokens"); images are not
counted. It is an estimate, and answers say so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

CHARS_PER_TOKEN = 4.0
PER_MESSAGE = 4
PRIMING = 3
METHOD = (f"estimate: {CHARS_PER_TOKEN:g} characters a token, plus {PER_MESSAGE} a message "
          "(images not counted)")
"""How an estimated count was made, in words (the answer's `method`)."""


def estimate(chat: Mapping[str, Any]) -> int:
    """Prompt tokens of an Ollama-shaped chat body (`messages`, `tools`), estimated."""
    chars = 0
    messages = chat.get("messages") or []
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        for field in ("content", "thinking"):
            value = message.get(field)
            chars += len(value) if isinstance(value, str) else 0
        calls = message.get("tool_calls")
        if calls:
            chars += len(json.dumps(calls, ensure_ascii=False))
    tools = chat.get("tools")
    if tools:
        chars += len(json.dumps(tools, ensure_ascii=False))
    return math.ceil(chars / CHARS_PER_TOKEN) + PER_MESSAGE * len(messages) + PRIMING
