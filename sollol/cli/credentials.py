"""The key the command line sends to our gateway: $SOLLOL_KEY, else the one saved for the CLI.

`sollol keys create NAME --admin` offers to save the new key in a 0600 file beside the config
(as `gh auth login` keeps its token), so the operator's own commands work right after it.
Every command that meets a 401 or 403 says which key it sent (`describe`), never the key.
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs

from sollol.config import config_path
from sollol.core.access import KEY_ENV

KEY_FILE_NAME = "cli-key"


@attrs.frozen
class CliKey:
    """The key a command sends, and where it came from (for messages)."""

    key: str = attrs.field(repr=False)
    source: str


def key_file() -> Path:
    """Where the CLI's saved key lives: beside the config file (`sollol config path`)."""
    return config_path().parent / KEY_FILE_NAME


def cli_key() -> CliKey | None:
    """$SOLLOL_KEY, else the saved key file's content; None when neither holds a key."""
    env = os.environ.get(KEY_ENV, "").strip()
    if env:
        return CliKey(env, f"${KEY_ENV}")
    path = key_file()
    try:
        saved = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return CliKey(saved, str(path)) if saved else None


def save_key(key: str) -> Path:
    """Write `key` to the key file, readable by this account only (created 0600, never wider)."""
    path = key_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{KEY_FILE_NAME}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a leftover file of an interrupted save keeps its mode otherwise
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(key + "\n")
    os.replace(tmp, path)
    return path


def describe(status: int) -> str:
    """What to tell the user when the gateway refused a command (401/403): the key it sent."""
    sent = cli_key()
    if sent is None:
        return (f"sent no key: set {KEY_ENV}, or save an admin key for the CLI with "
                f"`sollol keys create NAME --admin --save` ({key_file()})")
    if status == 403:
        return (f"the key from {sent.source} is not allowed this: it needs an admin key "
                "(`sollol keys list` shows each key's scope)")
    return (f"the gateway does not accept the key from {sent.source}: it may be revoked, or "
            "the gateway not yet reloaded since it was made (`kill -HUP PID`)")
