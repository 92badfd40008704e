"""Sizes and checks shared by the core and plugins: "13B", "8 GiB", ports, CIDRs, bounds."""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from typing import Any

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
    total = number * scale
    if not 0 <= total < math.inf:  # also refuses NaN, and what overflows ("1e999")
        raise ValueError(expected)
    return round(total)


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


# Config checks: each takes a typed value and returns it, or raises ValueError(what is expected).

MAX_SCAN_HOSTS = 1024
"""A named CIDR larger than this is refused: discovery is for a rack, not a network."""


def positive(value: float) -> float:
    """A finite number above 0 (NaN and infinity are not: timers and sizes need a number)."""
    if not 0 < value < math.inf:
        raise ValueError("a finite number above 0")
    return value


def non_negative(value: float) -> float:
    """A check for numbers of at least 0."""
    if not value >= 0:
        raise ValueError("a number of at least 0")
    return value


def share(value: float) -> float:
    """A share of a whole: above 0, at most 1."""
    if not 0 < value <= 1:
        raise ValueError("a share above 0 and at most 1.0")
    return value


def at_least(low: int) -> Callable[[int], int]:
    """A check for integers of at least `low`."""

    def check(value: int) -> int:
        if value < low:
            raise ValueError(f"an integer of at least {low}")
        return value

    return check


def port_number(value: int) -> int:
    """A TCP port, 1 to 65535."""
    if not 0 < value < 65536:
        raise ValueError("a port number from 1 to 65535")
    return value


def port_list(values: list[Any]) -> list[int]:
    """A list of TCP ports."""
    try:
        ports = [int(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError("a list of port numbers") from None
    if not all(0 < p < 65536 for p in ports):
        raise ValueError("a list of port numbers from 1 to 65535")
    return ports


def cidr(value: str | None) -> str | None:
    """A subnet to scan, at most MAX_SCAN_HOSTS addresses (None: no scan)."""
    if value is None:
        return None
    try:
        network = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError("a CIDR such as 192.168.1.0/24") from None
    if network.num_addresses > MAX_SCAN_HOSTS:
        raise ValueError(f"a CIDR of at most {MAX_SCAN_HOSTS} addresses (a /22 or smaller)")
    return str(network)


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                   "h": 3600.0}


def keep_alive_seconds(value: object) -> float | None:
    """Ollama's `keep_alive`: seconds a model stays loaded after a request (None: not given,
    the server's default; 0: unload now; math.inf: never unload, for any negative value).
    A number is seconds; text is a Go duration ("5m", "1h30m", "-1s") or a bare number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"keep_alive must be a number of seconds or a duration, not {value!r}")
    if isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        try:
            seconds = sign * float(body)
        except ValueError:
            parts = _DURATION_PART.findall(body)
            if not body or "".join(n + u for n, u in parts) != body:
                raise ValueError(f"keep_alive: invalid duration {value!r}") from None
            seconds = sign * sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    else:
        try:
            seconds = float(value)
        except OverflowError:  # an int past float's range: as long as it gets, either way
            seconds = -math.inf if value < 0 else math.inf
    if math.isnan(seconds):
        raise ValueError(f"keep_alive: invalid duration {value!r}")
    return math.inf if seconds < 0 else seconds


def seconds(value: float) -> float:
    """A number of seconds, 0 or more (a setting's check)."""
    if not value >= 0:  # NaN is not
        raise ValueError("a number of seconds, 0 or more")
    return value


def name_patterns(values: list[Any]) -> list[str]:
    """Model names or globs, lower-cased, without spaces (a setting's check)."""
    if not all(isinstance(v, str) and v.strip() and not any(c.isspace() for c in v.strip())
               for v in values):
        raise ValueError("a list of names or globs without spaces")
    return [v.strip().lower().rstrip("/") for v in values]


def folder_list(values: list[Any]) -> list[str]:
    """Folder paths, stripped (a setting's check)."""
    for value in values:
        if not isinstance(value, str) or not value.strip():
            raise ValueError("a list of folder paths")
    return [v.strip() for v in values]
