"""Reading and printing sizes: parameter counts ("13B") and byte sizes ("8 GiB")."""

from __future__ import annotations

import re

_COUNT = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}
_BYTES = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_NUMBER = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?(?:e[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_count(value: object) -> int:
    """A parameter count from a number or text like "13B", "7.5b", "500M" or "13e9"."""
    return _parse(value, _COUNT, "a parameter count such as 13e9 or \"13B\"")


def parse_bytes(value: object) -> int:
    """A byte size from a number or text like "8GiB", "8 GB" or "512MiB" (G means GiB)."""
    return _parse(value, _BYTES, "a byte size such as 8589934592 or \"8 GiB\"")


def _parse(value: object, units: dict[str, int], expected: str) -> int:
    if isinstance(value, bool):
        raise ValueError(expected)
    if isinstance(value, int | float):
        number, scale = float(value), 1
    elif isinstance(value, str) and (match := _NUMBER.match(value)):
        unit = match.group(2).lower()
        if unit not in units:
            raise ValueError(expected)
        number, scale = float(match.group(1)), units[unit]
    else:
        raise ValueError(expected)
    if number < 0 or number != number:
        raise ValueError(expected)
    return round(number * scale)


def format_count(count: int | None) -> str:
    """A parameter count as people write it: "13.0B", "205M"."""
    if count is None:
        return "unknown"
    for unit, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if count >= 100 * scale:
            return f"{count // scale}{unit}"
        if count >= scale:
            return f"{count / scale:.1f}{unit}"
    return str(count)


def format_bytes(size: int | None) -> str:
    """A byte size in binary units: "7.4 GiB", "512.0 MiB", "100 B"."""
    if size is None:
        return "unknown"
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(size) >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"
