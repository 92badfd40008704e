"""Object keys that a node's decoder would read otherwise than the gateway does.

Go's `encoding/json` (Ollama, and anything else written in Go) matches an object's keys to a
struct's fields case-insensitively, by Unicode simple folding (`K`, `k` and the Kelvin sign
U+212A are one letter; so are `S`, `s` and the long s U+017F), and the last matching key
wins. Python keeps every spelling apart, and decoders disagree on which of two equal keys
counts. So a body the gateway checked could mean another request to a node:

- two keys in one object that are equal, or equal but for case, are refused: one object, one
  reading, whatever the decoder (`{"model": "tiny", "Model": "secret"}`);
- a top-level key that spells a field the gateway reads in another case is refused: the gateway
  would not see it, a Go node would (`{"model": "tiny-x", "From": "secret"}` on `/api/create`).

Objects whose keys are the client's own names rather than fields (the property names of a JSON
schema, `metadata`, a tool call's `arguments`, a create's `files`: the object values of
`DATA_KEYS`, and everything inside them) may hold keys equal but for case: decoders read them
into maps, where case counts. Exact duplicates are refused there too.

`str.casefold` equates every pair Go's folding equates (and a few more, such as `ß` and `ss`: a
body refused for those is one no client sends); tests/security/test_scope_case_keys.py checks it
over every code point.
"""

from __future__ import annotations

import functools
from collections.abc import Collection
from typing import Any

from sollol.errors import RequestError

DATA_KEYS = frozenset({
    "properties", "patternProperties", "$defs", "definitions", "dependentSchemas",  # JSON schema
    "parameters", "input_schema", "schema", "format",  # schemas and create's parameter map
    "metadata", "arguments", "input", "files", "adapters", "logit_bias",
})
"""Keys whose object values hold the client's own names (maps, not fields, to a decoder)."""

HINT = ("Ollama (Go) reads keys case-insensitively, so the gateway and the node would see "
        "different requests; send each field once, spelled as the API spells it")
TWICE = ("decoders disagree on which of two equal keys counts, so the gateway and the node "
         "could see different requests; send each key once")


class KeyCheck:
    """A `json.loads` `object_pairs_hook` that refuses duplicate keys at once and notes objects
    holding keys equal but for case; `check` then decides on those by where they sit."""

    __slots__ = ("suspects",)

    def __init__(self) -> None:
        self.suspects: dict[int, tuple[str, str]] = {}
        """id() of each object with keys equal but for case -> the first two such keys."""

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            raise RequestError(f"key {_repeated(pairs)[:100]!r} appears twice in one object; "
                               f"{TWICE}")
        if len(obj) > 1:
            text = "".join(obj)
            if not text.isascii() or text != text.lower():  # else folding changes nothing
                pair = _equal_but_for_case(obj)
                if pair is not None:
                    self.suspects[id(obj)] = pair
        return obj

    def check(self, body: dict[str, Any], fields: Collection[str] = ()) -> None:
        """RequestError for a noted object outside the client's own maps, or for a top-level
        key that is one of `fields` in another case."""
        if self.suspects:
            _refuse_outside_data(body, self.suspects)
        if fields:
            text = "".join(body)
            if text.isascii() and text == text.lower():
                return  # (fields are lower case: only an exact spelling could match one)
            folded = _folded(frozenset(fields))
            for key in body:
                field = folded.get(key.casefold())
                if field is not None and field != key:
                    raise RequestError(f"field {key[:100]!r} is {field!r} in another case; "
                                       f"{HINT}")


def _repeated(pairs: list[tuple[str, Any]]) -> str:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return key
        seen.add(key)
    return ""  # pragma: no cover (called only when a key repeats)


def _equal_but_for_case(obj: dict[str, Any]) -> tuple[str, str] | None:
    seen: dict[str, str] = {}
    for key in obj:
        folded = key.casefold()
        if folded in seen:
            return seen[folded], key
        seen[folded] = key
    return None


@functools.lru_cache(maxsize=64)
def _folded(fields: frozenset[str]) -> dict[str, str]:
    return {field.casefold(): field for field in fields}


def _refuse_outside_data(body: dict[str, Any], suspects: dict[int, tuple[str, str]]) -> None:
    """Walk the body (only when some object was noted) to find where each noted object sits."""
    stack: list[tuple[Any, str, bool]] = [(body, "the body", False)]
    left = len(suspects)
    while stack and left:
        value, where, data = stack.pop()
        if isinstance(value, dict):
            pair = suspects.get(id(value))
            if pair is not None:
                left -= 1
                if not data:
                    first, second = (p[:100] for p in pair)
                    raise RequestError(f"keys {first!r} and {second!r} in {where} differ only "
                                       f"in case; {HINT}")
            for key, child in value.items():
                if isinstance(child, (dict, list)):
                    mapping = key in DATA_KEYS and isinstance(child, dict)
                    stack.append((child, _path(where, key), data or mapping))
        elif isinstance(value, list):
            stack.extend((child, f"{where}[{i}]", data) for i, child in enumerate(value)
                         if isinstance(child, (dict, list)))


def _path(where: str, key: str) -> str:
    return key[:40] if where == "the body" else f"{where}.{key[:40]}"
