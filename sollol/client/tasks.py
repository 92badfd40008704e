"""Values of the library API: a task to run, the response it got, and the result of a fan-out.

Requests and responses use Ollama's API shapes (`/api/chat`, `/api/generate`, `/api/embed`):
the gateway translates to and from OpenAI-compatible backends, so callers see one dialect.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs

Op = Literal["chat", "generate", "embed"]
OPS: tuple[Op, ...] = ("chat", "generate", "embed")
_PRIMARY: dict[Op, str] = {"chat": "messages", "generate": "prompt", "embed": "input"}


def _fields(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return dict(value)


def user_messages(messages: str | Sequence[Mapping[str, Any]],
                  system: str | None = None) -> list[dict[str, Any]]:
    """Chat messages from a list of messages or one user prompt, with an optional system one."""
    listed = ([{"role": "user", "content": messages}] if isinstance(messages, str)
              else [dict(m) for m in messages])
    return [{"role": "system", "content": system}, *listed] if system is not None else listed


@attrs.frozen
class Task:
    """One request to run: its operation, model and Ollama request fields (besides `model`)."""

    op: Op
    model: str
    fields: Mapping[str, Any] = attrs.field(factory=dict, converter=_fields)
    id: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"task op must be one of {', '.join(OPS)}, not {self.op!r}")
        if not isinstance(self.model, str) or not self.model:
            raise ValueError("task model must be a non-empty string")

    @classmethod
    def chat(cls, model: str, messages: str | Sequence[Mapping[str, Any]], *,
             system: str | None = None, id: str | None = None, **fields: Any) -> Task:
        """A chat task; `messages` may be one user prompt; `system` prepends a system message."""
        return cls("chat", model, {"messages": user_messages(messages, system), **fields}, id)

    @classmethod
    def generate(cls, model: str, prompt: str, *, id: str | None = None, **fields: Any) -> Task:
        """A completion task (`system`, `options`, `format`... pass through as Ollama fields)."""
        return cls("generate", model, {"prompt": prompt, **fields}, id)

    @classmethod
    def embed(cls, model: str, input: str | Sequence[str], *, id: str | None = None,
              **fields: Any) -> Task:
        """An embedding task for one text or a list of texts."""
        return cls("embed", model, {"input": input if isinstance(input, str) else list(input),
                                    **fields}, id)

    def body(self) -> dict[str, Any]:
        """The Ollama request body; never streamed (a task's result is one whole reply)."""
        body = {**self.fields, "model": self.model}
        if self.op != "embed":
            body["stream"] = False
        return body


@attrs.frozen
class Response:
    """A whole reply in Ollama's shape, with the route and backend that served it."""

    op: Op
    model: str
    data: Mapping[str, Any]
    route: str = ""
    backend: str = ""
    policy: str = ""
    reason: str = ""
    seconds: float = 0.0
    fallback: str = ""
    """The `model_fallbacks` model that served it when `model` could not ("" otherwise)."""

    @property
    def text(self) -> str:
        """The generated text (empty for embeddings)."""
        if self.op == "chat":
            return str((self.data.get("message") or {}).get("content") or "")
        if self.op == "generate":
            return str(self.data.get("response") or "")
        return ""

    @property
    def message(self) -> dict[str, Any]:
        """The assistant message of a chat reply (role, content, tool calls)."""
        return dict(self.data.get("message") or {})

    @property
    def thinking(self) -> str:
        """The model's reasoning, when it was asked to think (`think=True` or a level)."""
        source = self.data.get("message") if self.op == "chat" else self.data
        return str((source or {}).get("thinking") or "")

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """The tools the model asked to call: `{"function": {"name", "arguments"}}` each."""
        return list((self.data.get("message") or {}).get("tool_calls") or [])

    def json(self) -> Any:
        """The text parsed as JSON (structured output: `format="json"` or a JSON schema)."""
        import json

        from sollol.errors import BackendError

        try:
            return json.loads(self.text)
        except ValueError:
            raise BackendError(f"the reply is not JSON: {self.text[:200]!r}") from None

    @property
    def embeddings(self) -> list[list[float]]:
        return list(self.data.get("embeddings") or [])

    @property
    def tokens(self) -> int:
        """Tokens generated (Ollama's `eval_count`; 0 when the backend did not say)."""
        return int(self.data.get("eval_count") or 0)


@attrs.frozen
class TaskResult:
    """How one task of a fan-out ended: a response, or the error captured with the task."""

    index: int
    task: Task
    response: Response | None = None
    error: str | None = None
    error_type: str | None = None
    status: int | None = None
    cancelled: bool = False
    seconds: float = 0.0
    exception: BaseException | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def ok(self) -> bool:
        return self.response is not None

    @property
    def id(self) -> str:
        """The task's id, or its 1-based position when it has none."""
        return self.task.id if self.task.id is not None else str(self.index + 1)

    @property
    def text(self) -> str:
        return self.response.text if self.response is not None else ""

    def unwrap(self) -> Response:
        """The response, or raise the task's error."""
        if self.response is not None:
            return self.response
        if self.exception is not None:
            raise self.exception
        from sollol.errors import SollolError

        raise SollolError(f"task {self.id} {'was cancelled' if self.cancelled else 'failed'}: "
                          f"{self.error}")


def primary_field(op: Op) -> str:
    """The request field that carries a task's input (messages, prompt or input)."""
    return _PRIMARY[op]
