"""`sollol batch` files: input lines, reading an earlier run's output, rewriting failures."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from sollol.cli.batch_io import BatchInputError, drop_failed, parse_line, read_done, read_input
from sollol.cli.batch_job import plan
from sollol.cli.progress import Progress


def _line(**data: object) -> bytes:
    return json.dumps(data).encode()


def test_op_is_taken_or_inferred() -> None:
    chat = parse_line(_line(id="a", model="m", messages=[{"role": "user", "content": "hi"}]), 1)
    assert chat.task.op == "chat" and chat.id == "a" and chat.task.id == "a"
    generate = parse_line(_line(id=7, model="m", prompt="hi", options={"num_predict": 2}), 2)
    assert generate.task.op == "generate" and generate.id == 7
    assert generate.task.body() == {"prompt": "hi", "options": {"num_predict": 2}, "model": "m",
                                    "stream": False}
    embed = parse_line(_line(id="e", op="embed", input=["x", "y"]), 3, default_model="dflt")
    assert embed.task.op == "embed" and embed.task.model == "dflt"


@pytest.mark.parametrize(("line", "message"), [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (_line(model="m", prompt="x"), "needs an \"id\""),
    (_line(id=True, model="m", prompt="x"), "needs an \"id\""),
    (_line(id="a", model="m"), "needs \"op\""),
    (_line(id="a", model="m", prompt="x", input="y"), "needs \"op\""),
    (_line(id="a", op="talk", model="m", prompt="x"), "\"op\" must be one of"),
    (_line(id="a", prompt="x"), "needs a \"model\""),
    (_line(id="a", op="chat", model="m", prompt="x"), "needs 'messages'"),
    (_line(id="a", model="m", prompt="x", stream=True), "\"stream\" must be false"),
    (_line(id="a", model="m", messages="hi"), "'messages' must be an array"),
    (_line(id="a", model="m", prompt="x", options={"stop": 3}), "options.stop"),
])
def test_bad_lines_say_what_is_wrong(line: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_line(line, 1)


def test_read_input_names_every_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join([_line(id="a", model="m", prompt="x"), b"", b"oops",
                                 _line(id="a", model="m", prompt="again"),
                                 _line(id="b", model="m", prompt="y")]) + b"\n")
    with pytest.raises(BatchInputError) as caught:
        read_input(path)
    text = str(caught.value)
    assert "2 bad input line(s)" in text and "line 3: not valid JSON" in text
    assert "line 4: id 'a' is already used on line 1" in text


def test_read_done_drops_a_half_written_last_line(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(_line(id="a", ok=True) + b"\n" + _line(id=2, ok=False) + b"\n"
                    + b'{"id": "c", "ok": tr')
    assert read_done(out) == {"a": True, "2": False}
    assert out.read_bytes().endswith(b"\n") and b'"c"' not in out.read_bytes()


def test_read_done_refuses_a_foreign_file(tmp_path: Path) -> None:
    out = tmp_path / "notes.txt"
    out.write_text("dear diary\n")
    with pytest.raises(BatchInputError, match="not a `sollol batch` result"):
        read_done(out)


def test_plan_skips_done_ids_and_retries_failed_on_request(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(_line(id=i, model="m", prompt=str(i)) + b"\n" for i in range(5)))
    items = read_input(src)
    out = tmp_path / "out.jsonl"
    out.write_bytes(_line(id=0, ok=True) + b"\n" + _line(id=3, ok=False) + b"\n")
    first = plan(items, out)
    assert [i.id for i in first.pending] == [1, 2, 4]
    assert (first.done_ok, first.done_failed, first.total) == (1, 1, 5)
    again = plan(items, out, retry_failed=True)
    assert [i.id for i in again.pending] == [1, 2, 3, 4] and again.retried == 1
    assert read_done(out) == {"0": True}
    assert drop_failed(tmp_path / "absent.jsonl") == 0


def test_retry_failed_after_a_kill_mid_write_and_on_a_foreign_file(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(_line(id=i, model="m", prompt=str(i)) + b"\n" for i in range(3)))
    items = read_input(src)
    out = tmp_path / "out.jsonl"
    out.write_bytes(_line(id=0, ok=False) + b"\n" + _line(id=1, ok=True) + b"\n"
                    + b'{"id": 2, "ok": tr')
    again = plan(items, out, retry_failed=True)
    assert [i.id for i in again.pending] == [0, 2] and again.retried == 1
    assert read_done(out) == {"1": True}
    foreign = tmp_path / "notes.jsonl"
    foreign.write_text('["not a result"]\n')
    with pytest.raises(BatchInputError, match="not a `sollol batch` result"):
        plan(items, foreign, retry_failed=True)
    assert foreign.read_text() == '["not a result"]\n'


ERASE = "\r\x1b[2K"
"""Back to the start of the line and clear it: a redraw in place."""


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_shows_count_failures_rate_and_eta() -> None:
    stream = io.StringIO()
    progress = Progress(20, stream=stream)
    progress.begin()
    progress.started -= 10.0  # as if ten seconds had passed
    for index in range(5):
        progress.update(ok=index != 2, tokens=40)
    line = progress.line()
    assert line.startswith("5/20  [######") and "25%" in line and "1 failed" in line
    rate, eta = re.search(r"([\d.]+) tok/s  ETA 0:(\d\d)", line).groups()
    assert 19.0 <= float(rate) <= 20.0 and int(eta) in (30, 31)  # 200 tokens in ~10 s; 15 left
    logged = stream.getvalue().splitlines()
    assert logged[0].startswith("0/20") and "ETA --:--" in logged[0]
    assert len(logged) == 3  # the empty bar, then one line per tenth of the work (2 and 4 done)
    for _ in range(15):
        progress.update(ok=True)
    progress.finish()
    assert stream.getvalue().splitlines()[-1].startswith("20/20") and " in 0:" in stream.getvalue()


def test_progress_redraws_one_line_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")
    stream = _Terminal()
    progress = Progress(3, stream=stream)
    progress.begin()
    for _ in range(3):
        progress.update(ok=True, tokens=5)
    progress.finish()
    text = stream.getvalue()
    assert text.count("\n") == 1  # one line, redrawn in place, ended once
    first, last = text.partition(ERASE)[0], text.rpartition(ERASE)[2]  # the first and last draw
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", last)
    assert "0/3" in first and plain.startswith("3/3") and "100%" in plain and "tok/s" in plain


def test_a_dumb_terminal_gets_log_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "dumb")
    stream = _Terminal()
    progress = Progress(2, stream=stream)
    progress.begin()
    for _ in range(2):
        progress.update(ok=False)
    progress.finish()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("0/2") and lines[-1].startswith("2/2  [")
    assert "2 failed" in lines[-1] and "\x1b" not in stream.getvalue()
