"""JSON from clients, parsed so that nothing in it can break what comes after.

Python's `json` accepts what later steps choke on: `NaN`/`Infinity` literals and numbers like
`1e400` (no JSON encoder may write them back), nesting deep enough to exhaust the stack on the
way out, lone UTF-16 surrogates (`"\\ud800"`: no UTF-8 encoder accepts them) and bodies in
UTF-16. Each is a 400 here, except lone surrogates, which become U+FFFD as Ollama's decoder
does (JavaScript clients emit them when they cut a string inside an emoji).

One body, one meaning: the gateway checks a request (its model above all) and forwards the
client's bytes, so every decoder must read them as the check did. Keys a Go decoder (Ollama)
would read otherwise, duplicates and keys equal but for case, are a 400
(sollol/dialects/jsonkeys.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection
from typing import Any

from sollol.dialects.jsonkeys import KeyCheck
from sollol.errors import RequestError

MAX_DEPTH = 64
"""Deepest nesting of arrays and objects accepted (tool schemas rarely pass 10)."""
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def loads(text: str,
          object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None) -> Any:
    """`json.loads`, strict: ValueError for NaN/Infinity, out-of-range numbers, integers of
    more than 4300 digits and nesting deeper than MAX_DEPTH (never RecursionError)."""
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite,
                           object_pairs_hook=object_pairs_hook)
    except RecursionError:
        raise ValueError(f"nested more than {MAX_DEPTH} deep") from None
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth(value) > MAX_DEPTH:
        raise ValueError(f"nested more than {MAX_DEPTH} deep")
    return value


def from_node(text: str | bytes) -> Any:
    """`json.loads` for what a node sent: ValueError, never RecursionError, however deeply a
    hostile node nests its reply (a node's NaN is left as Python reads it)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(f"nested too deeply to read ({len(text)} bytes)") from None


def parse_json_object(raw: bytes, fields: Collection[str] = ()) -> tuple[dict[str, Any], bytes]:
    """The body as a JSON object, and the bytes to forward (rewritten only to drop lone
    surrogates); RequestError saying what is wrong otherwise, also for keys a Go decoder would
    read otherwise than the gateway (see the module docstring; `fields`: the top-level fields
    the caller reads)."""
    if not raw.strip():
        raise RequestError("request body is empty; expected a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(f"request body is not UTF-8 ({exc.reason} at byte {exc.start})") \
            from None
    keys = KeyCheck()
    try:
        body = loads(text, keys)
    except ValueError as exc:
        raise RequestError(f"invalid JSON in request body: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError(f"request body must be a JSON object, not {json_type(body)}")
    keys.check(body, fields)
    if _SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(body):
        body = _replace_surrogates(body)
        raw = json.dumps(body).encode()
    return body, raw


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _depth(value: Any) -> int:
    """Nesting depth, without recursion (the value may be deep enough to exhaust the stack)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > MAX_DEPTH:
                return deepest
            stack.extend((child, depth + 1) for child in children
                         if isinstance(child, (dict, list)))
    return deepest


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return _LONE_SURROGATE.search(value) is not None
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def _replace_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_replace_surrogates(k): _replace_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_surrogates(v) for v in value]
    return value


JSON_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
               list: "an array", dict: "an object"}


def json_type(value: Any) -> str:
    """How JSON would name the type of `value` ("an array", "null", ...)."""
    if value is None:
        return "null"
    for kind, name in JSON_NAMES.items():
        if isinstance(value, kind):
            return name
    return type(value).__name__
