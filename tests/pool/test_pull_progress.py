"""`sollol pull`'s progress per node: log lines off a terminal, live rich bars on one."""

from __future__ import annotations

import re
from typing import Any

import pytest
from sollol_plugins.ollama_pool.pull_progress import PullProgress

EVENTS = [
    {"node": "a", "status": "pulling manifest"},
    {"node": "a", "status": "pulling manifest"},
    {"node": "a", "status": "pulling 6a0746a1ec1a", "total": 200, "completed": 100},
    {"node": "[::1]:11434", "error": "file does not exist"},
    {"node": "a", "status": "success"},
]


def test_off_a_terminal_each_change_of_a_node_is_one_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    with PullProgress(tty=False) as bars:
        for event in EVENTS:
            bars.update(event)
    assert capsys.readouterr().out.splitlines() == [
        "a: pulling manifest",
        f"a: [{'#' * 15}{'.' * 15}]  50.0% pulling 6a0746a1ec1a",
        "[::1]:11434: error: file does not exist",
        "a: success",
    ]


def test_on_a_terminal_each_node_has_a_live_bar(fake_terminal: Any) -> None:
    screen = fake_terminal(120)
    with PullProgress(tty=True) as bars:
        for event in EVENTS:
            bars.update(event)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())
    last = [line.rstrip() for line in plain.rstrip("\n").splitlines()[-2:]]  # the final frame
    assert last[0].startswith("a ") and "100%" in last[0] and last[0].endswith("success")
    assert last[1].startswith("[::1]:11434") and "error: file does not exist" in last[1]
    assert "a: " not in plain  # no log lines
