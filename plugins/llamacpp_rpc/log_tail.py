"""`sollol shard logs`: a coordinator's log on the terminal, escaped.

llama-server's log echoes strings clients sent (a bad grammar, a model name), so every control
character but the newline is written out: a log line must not drive the reader's terminal.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from sollol.core.logtext import escape_lines


def print_log(path: Path, lines: int, follow: bool) -> None:
    """Print the last `lines` lines of `path`, then (with `follow`) what is appended, until ^C."""
    with path.open("rb") as handle:
        text = handle.read().decode(errors="replace")
        click.echo(escape_lines("\n".join(text.splitlines()[-lines:])) if lines else "",
                   nl=bool(lines))
        while follow:
            chunk = handle.read()
            if chunk:
                click.echo(escape_lines(chunk.decode(errors="replace")), nl=False)
            else:
                try:
                    time.sleep(0.25)
                except KeyboardInterrupt:
                    return
