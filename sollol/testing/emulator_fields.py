"""Generation fields of current Ollama (v0.33) as the emulator checks and answers them:
`think` (boolean or a level), `logprobs`/`top_logprobs`, `truncate`, `shift`, and the message
fields `thinking`, `tool_calls`, `tool_name`."""

from __future__ import annotations

import hashlib
from typing import Any

from sollol.testing.emulator_http import HttpError

THINK_LEVELS = ("low", "medium", "high", "max")
_BOOLEANS = ("logprobs", "truncate", "shift", "raw")
MAX_TOP_LOGPROBS = 20


def check(body: dict[str, Any], chat: bool) -> None:
    """400 for a field value Ollama refuses."""
    think = body.get("think")
    if think is not None and not isinstance(think, bool) and think not in THINK_LEVELS:
        raise HttpError(400, f"invalid think value: {think!r} (use true, false or one of "
                             f"{', '.join(THINK_LEVELS)})")
    for name in _BOOLEANS:
        value = body.get(name)
        if value is not None and not isinstance(value, bool):
            raise HttpError(400, f"{name} must be a boolean")
    top = body.get("top_logprobs")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int)
                            or not 0 <= top <= MAX_TOP_LOGPROBS):
        raise HttpError(400, f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}")
    if chat:
        for index, message in enumerate(body.get("messages") or []):
            for name in ("thinking", "tool_name"):
                value = message.get(name)
                if value is not None and not isinstance(value, str):
                    raise HttpError(400, f"messages[{index}].{name} must be a string")
            calls = message.get("tool_calls")
            if calls is not None and not isinstance(calls, list):
                raise HttpError(400, f"messages[{index}].tool_calls must be a list")


def wants_logprobs(body: dict[str, Any]) -> bool:
    return body.get("logprobs") is True or bool(body.get("top_logprobs"))


def logprobs(text: str, top: int) -> list[dict[str, Any]]:
    """Ollama's per-token log probabilities for one generated piece (deterministic)."""
    if not text:
        return []
    def entry(token: str, rank: int) -> dict[str, Any]:
        digest = hashlib.sha256(f"{token}\0{rank}".encode()).digest()
        return {"token": token, "logprob": -round((digest[0] + 1) / 64 + rank, 4),
                "bytes": list(token.encode())}
    best = entry(text, 0)
    if top:
        best["top_logprobs"] = [best.copy(), *(entry(f"{text}~{i}", i) for i in range(1, top))]
    return [best]
