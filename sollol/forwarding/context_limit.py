"""A prompt longer than a node's context: the node's refusal, and how the user raises the limit.

llama-server answers `400 exceed_context_size_error` ("... exceeds the available context size
(N tokens), try increasing it"); vLLM and OpenAI say "maximum context length". Neither says how,
and the way depends on who started the node, so the reply names each way.
"""

from __future__ import annotations

import re
from typing import Any

from sollol.dialects.jsonin import from_node

CODE = "context_length_exceeded"
HOW_TO_RAISE = (
    "raise the context each request gets: `sollol run --local N --ctx-size TOKENS` (setting "
    "local_ctx_size) for the local cluster, setting rpc_ctx_size for sharded models, "
    "llama-server's -c (shared among its --parallel slots) or Ollama's num_ctx for nodes you "
    "start yourself; coding agents need 16384 tokens (docs/clients.md)")
_WORDS = re.compile(r"exceeds? the (available )?context|maximum context length|"
                    r"context[ _]length[ _]exceeded|context window", re.IGNORECASE)


def too_long(status: int, raw: bytes) -> dict[str, Any] | None:
    """The figures of a node's "prompt longer than my context" refusal ({} when it gave none),
    or None for any other reply."""
    if status != 400 or not _WORDS.search(raw[:4096].decode("utf-8", "replace")):
        return None
    try:
        data = from_node(raw)
    except ValueError:
        return {}
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return {}
    return {key: error[key] for key in ("n_prompt_tokens", "n_ctx")
            if isinstance(error.get(key), int)}
