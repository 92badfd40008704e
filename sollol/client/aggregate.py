"""Combine a fan-out's partial answers: concatenate them, or build a synthesis request."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sollol.client.tasks import Task, TaskResult
from sollol.errors import RequestError

DEFAULT_INSTRUCTION = (
    "Several assistants answered parts of one job. Combine their answers below into one "
    "coherent, complete answer. Resolve contradictions and do not repeat yourself."
)


def concatenate(results: Sequence[TaskResult], *, separator: str = "\n\n",
                headings: bool = True, include_failed: bool = False) -> str:
    """The successful answers in input order, each under a `### id` heading if `headings`.

    With `include_failed`, a failed task appears as a line naming its error.
    """
    parts = []
    for result in results:
        if result.ok:
            body = result.text
        elif include_failed:
            body = f"[failed: {result.error}]"
        else:
            continue
        parts.append(f"### {result.id}\n{body}" if headings else body)
    return separator.join(parts)


def synthesis_prompt(results: Sequence[TaskResult], instruction: str = DEFAULT_INSTRUCTION) -> str:
    """The user message of a synthesis request: the instruction, then each partial answer."""
    answered = [r for r in results if r.ok]
    if not answered:
        first = next((r.error for r in results if r.error), "no tasks were given")
        raise RequestError(f"nothing to synthesize: none of the {len(results)} tasks "
                           f"succeeded (first error: {first})")
    missing = [r for r in results if not r.ok]
    note = ""
    if missing:
        names = ", ".join(f"{r.id} ({r.error})" for r in missing)
        note = f"\n\nThese parts have no answer and must not be made up: {names}."
    return f"{instruction}{note}\n\n{concatenate(answered)}"


def synthesis_task(model: str, results: Sequence[TaskResult],
                   instruction: str = DEFAULT_INSTRUCTION, *, system: str | None = None,
                   id: str | None = "synthesis", **fields: Any) -> Task:
    """A chat task asking `model` to merge the partial answers in `results`."""
    return Task.chat(model, synthesis_prompt(results, instruction), system=system, id=id,
                     **fields)
