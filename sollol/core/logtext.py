"""Client and node strings made safe for a text log line: one event is one line.

A node's error may echo a client's string (llama-server does for a bad `response_format`), and a
model name is whatever the client sent: with a newline either would forge a second log line,
with an ANSI escape it would drive the reader's terminal. Every text log field goes through
`escape`; SOLLOL's own log handler formats with `OneLineFormatter`.
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
