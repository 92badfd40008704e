"""Issue 28, finding 13: `sollol --help` and the config commands answer at once, because
registering commands imports nothing a command needs only when it runs.

Checked by what is imported (`python -X importtime`), never by the clock: HTTP clients, the
GGUF reader and numpy, asyncio, the server and the terminal UI load when a command uses them.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

HEAVY = ("httpx", "gguf", "numpy", "asyncio", "uvicorn", "rich", "sollol.core.runtime",
         "sollol.gateway.app", "sollol.gateway.server", "sollol.client")


def imported(*args: str) -> set[str]:
    """Every module `python -m sollol ARGS` imports, as `-X importtime` lists them."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "sollol", *args],
                          capture_output=True, text=True, timeout=120, env={**os.environ},
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-2000:]
    names = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    assert "sollol.cli" in names  # the listing is real
    return names


@pytest.mark.parametrize("args", [["--help"], ["config", "show"], ["config", "path"],
                                  ["keys", "list"], ["rpc", "--help"]])
def test_quick_commands_import_nothing_heavy(args: list[str]) -> None:
    names = imported(*args)
    heavy = sorted(n for n in names if any(n == h or n.startswith(h + ".") for h in HEAVY))
    assert heavy == [], f"`sollol {' '.join(args)}` imports {heavy}"
