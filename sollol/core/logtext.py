"""Client and node strings made safe for a text log line or a terminal: one event is one line.

A node's error may echo a client's string (llama-server does for a bad `response_format`), and a
model name is whatever the client sent: with a newline either would forge a second log line,
with an ANSI escape it would drive the reader's terminal. Every text log field goes through
`escape`; SOLLOL's own log handler formats with `OneLineFormatter`. The CLI reads a gateway's
JSON through `escape_strings` (`sollol.cli.gateway_client.read_json`) for the same reasons.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

# C0 and C1 controls, DEL, everything `str.splitlines` splits on, bidi overrides ("Trojan
# source"), lone surrogates (unencodable: the line would be dropped), and the backslash itself
# so that an escape in the log is never ambiguous with the same text sent literally.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069"
                     "\ud800-\udfff\\\\]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """`text` with every control character, line break and backslash written as an escape."""
    return _UNSAFE.sub(_escaped, text)


# On a terminal the backslash is harmless and ambiguity does not matter; a path or an id read
# back from a gateway keeps its backslashes, so the CLI can send it back unchanged.
_TERMINAL_UNSAFE = re.compile(_UNSAFE.pattern.replace("\\\\", ""))


def terminal_text(text: str) -> str:
    """`text` with every control character and line break written as an escape."""
    return _TERMINAL_UNSAFE.sub(_escaped, text)


def escape_lines(text: str) -> str:
    """`text` for a terminal, line by line: its newlines stay, every other control is escaped."""
    return "\n".join(terminal_text(line) for line in text.split("\n"))


def escape_strings(value: Any) -> Any:
    """`value` (decoded JSON) with every string in it, keys included, passed through
    `terminal_text`: what a gateway or node sends is safe to print however a view shows it."""
    if isinstance(value, str):
        return terminal_text(value)
    if isinstance(value, dict):
        return {terminal_text(k) if isinstance(k, str) else k: escape_strings(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [escape_strings(v) for v in value]
    return value


# What `json.dumps(ensure_ascii=False)` leaves raw although a reader may split or act on it; in
# JSON output such characters can only be inside strings, where `\\uXXXX` means the same.
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069"
                          "\ud800-\udfff]")


def json_line(value: Any) -> str:
    """`value` as one line of JSON, non-ASCII text readable, every control escaped."""
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}",
                            json.dumps(value, ensure_ascii=False))


class OneLineFormatter(logging.Formatter):
    """A formatter whose message is escaped (a traceback, added after it, keeps its lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        copy = logging.makeLogRecord(record.__dict__)
        copy.message = escape(record.message)
        return super().formatMessage(copy)
