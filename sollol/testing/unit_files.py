"""Run what a systemd unit would run, without systemd: for tests of the units SOLLOL writes.

`systemd-analyze verify` checks a unit's syntax and that its program exists; only running its
`ExecStart=` with its `Environment=` shows the command itself works (right options, a config it
can load). The specifiers SOLLOL's units use (%S, %C) become folders the caller names.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

__all__ = ["unit_command"]

_SPECIFIER = re.compile(r"%(.)")


def _expand(text: str, folders: dict[str, Path]) -> str:
    def one(match: re.Match[str]) -> str:
        letter = match.group(1)
        if letter == "%":
            return "%"
        if letter not in folders:
            raise ValueError(f"specifier %{letter} is not one this helper expands")
        return str(folders[letter])

    return _SPECIFIER.sub(one, text)


def unit_command(text: str, state: Path, cache: Path) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of the unit's `[Service]` ExecStart=, with %S -> `state` and
    %C -> `cache`, quotes and `$$` undone as systemd does."""
    folders = {"S": state, "C": cache}
    argv: list[str] = []
    env: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "ExecStart":
            argv = [_expand(word, folders).replace("$$", "$") for word in shlex.split(value)]
        elif key == "Environment":
            for word in shlex.split(value):
                name, _, setting = word.partition("=")
                env[name] = _expand(setting, folders)
    if not argv:
        raise ValueError("the unit has no ExecStart=")
    return argv, env
