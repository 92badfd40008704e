"""`sollol batch` files: parse the input lines, read what an earlier run wrote, append results.

Input: one JSON object per line, `{"id": ..., "op": "chat"|"generate"|"embed", "model": ...,
<Ollama request fields>}`; `op` may be left out when exactly one of `messages`, `prompt`,
`input` says what it is. Output: one JSON object per finished line, appended and flushed at
once, so a killed run loses nothing it finished and a rerun skips the ids already there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import attrs

from sollol.client.tasks import OPS, Task, TaskResult, primary_field
from sollol.errors import RequestError

MAX_REPORTED = 20
"""Bad input lines named in one error message (the count covers them all)."""


@attrs.frozen
class BatchItem:
    """One input line: its 1-based line number, its id as written, and the task."""

    line: int
    id: str | int
    task: Task


class BatchInputError(RequestError):
    """The input (or an existing output file) has lines SOLLOL cannot use; names them all."""


def read_input(path: Path, default_model: str | None = None) -> list[BatchItem]:
    """Every task in `path`; raise BatchInputError listing the bad lines (nothing runs then)."""
    items: list[BatchItem] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                item = parse_line(raw, number, default_model)
            except ValueError as exc:
                problems.append(f"line {number}: {exc}")
                continue
            key = str(item.id)
            if key in seen:
                problems.append(f"line {number}: id {item.id!r} is already used on line "
                                f"{seen[key]}")
                continue
            seen[key] = number
            items.append(item)
    if problems:
        shown = "\n  ".join(problems[:MAX_REPORTED])
        more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED \
            else ""
        raise BatchInputError(f"{path}: {len(problems)} bad input line(s):\n  {shown}{more}")
    return items


def parse_line(raw: bytes, number: int, default_model: str | None = None) -> BatchItem:
    """One input line as a BatchItem; ValueError says what is wrong with it."""
    from sollol.forwarding.validate import validate

    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    fields = dict(data)
    ident = fields.pop("id", None)
    if isinstance(ident, bool) or not isinstance(ident, str | int) or ident == "":
        raise ValueError("needs an \"id\" (a non-empty string or an integer)")
    op = fields.pop("op", None) or _infer_op(fields)
    if op not in OPS:
        raise ValueError(f"\"op\" must be one of {', '.join(OPS)}, not {op!r}")
    model = fields.pop("model", None) or default_model
    if not isinstance(model, str) or not model:
        raise ValueError("needs a \"model\" (or pass --model)")
    if fields.pop("stream", False) is not False:
        raise ValueError("\"stream\" must be false or absent (batch results are whole replies)")
    if primary_field(op) not in fields:
        raise ValueError(f"a {op} line needs {primary_field(op)!r}")
    task = Task(op, model, fields, id=str(ident))
    try:
        validate("ollama", op, json.dumps(task.body()).encode())
    except RequestError as exc:
        raise ValueError(str(exc)) from None
    return BatchItem(number, ident, task)


def _infer_op(fields: Mapping[str, Any]) -> str:
    found = [op for op in OPS if primary_field(op) in fields]
    if len(found) != 1:
        raise ValueError("needs \"op\" (chat, generate or embed): it cannot be told from the "
                         "fields (messages means chat, prompt generate, input embed)")
    return found[0]


def read_done(path: Path) -> dict[str, bool]:
    """Ids an earlier run finished (id -> ok), dropping a half-written last line of a kill."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1
    if complete < len(data):  # the run was killed mid-write: that line's task runs again
        with path.open("r+b") as handle:
            handle.truncate(complete)
    done: dict[str, bool] = {}
    for number, line in _lines(data[:complete]):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not (isinstance(record, dict) and "id" in record and isinstance(record.get("ok"), bool)):
            raise BatchInputError(f"{path} line {number} is not a `sollol batch` result; "
                                  "refusing to append to this file (choose another -o)")
        done[str(record["id"])] = record["ok"]
    return done


def drop_failed(path: Path) -> int:
    """Rewrite `path` without its failed results (so they run again); return how many."""
    if not path.exists():
        return 0
    read_done(path)  # refuse a foreign file, drop a half-written last line (a killed run)
    kept, dropped = [], 0
    for _number, line in _lines(path.read_bytes()):
        if json.loads(line).get("ok") is True:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        temp = path.with_name(path.name + ".tmp")
        temp.write_bytes(b"".join(line + b"\n" for line in kept))
        os.replace(temp, path)  # atomic: a kill leaves the old file or the new one
    return dropped


def _lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    for number, line in enumerate(data.split(b"\n"), start=1):
        if line.strip():
            yield number, line


def result_record(item: BatchItem, result: TaskResult) -> dict[str, Any]:
    """The output line for a finished task: the reply, or the error captured with it."""
    record: dict[str, Any] = {"id": item.id, "ok": result.ok, "op": item.task.op,
                              "model": item.task.model}
    response = result.response
    if response is not None:
        if response.op != "embed":
            record["text"] = response.text
        record.update(response=dict(response.data), route=response.route,
                      backend=response.backend)
    else:
        record.update(error=result.error, error_type=result.error_type, status=result.status)
    record["seconds"] = round(result.seconds, 3)
    return record


class ResultWriter:
    """Appends one result per line, flushed at once (a kill loses no finished line)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle: IO[str] = path.open("a", encoding="utf-8")

    def write(self, record: Mapping[str, Any]) -> None:
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()
