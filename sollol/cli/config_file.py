"""The config file as the operator wrote it: commands change values in place.

`sollol config set|unset` and `sollol keys create|revoke` edit one key; every comment, blank
line and the order of keys and tables stay as they were (tomlkit keeps the document's layout).
A new top-level key goes before the first table, where TOML reads it as top-level. A command
never opens a `[section]`: a new table is an inline table and a list of tables (`api_keys`) an
inline array, both among the top-level keys, so a line the operator later appends at the end of a
file that had no sections still is a top-level key (sections the operator wrote are edited where
they stand).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import tomlkit
import tomlkit.exceptions
from tomlkit.items import AoT, Table

from sollol.config import write_text_atomically
from sollol.errors import ConfigError


@attrs.define
class ConfigDocument:
    """One config file's TOML document, read and written with its layout."""

    path: Path
    doc: tomlkit.TOMLDocument

    @classmethod
    def read(cls, path: Path) -> ConfigDocument:
        """The document in `path` (an empty one when the file does not exist)."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
        try:
            return cls(path, tomlkit.parse(text))
        except tomlkit.exceptions.ParseError as exc:
            raise ConfigError("(file)", str(path), f"valid TOML ({exc})") from None

    def get(self, key: str, default: Any = None) -> Any:
        """A top-level key's value as plain Python values."""
        value = self.doc.get(key, default)
        return value.unwrap() if hasattr(value, "unwrap") else value

    def set(self, parts: Sequence[str], value: Any) -> None:
        """Set the key at `parts` (a dotted path into tables), keeping everything else."""
        *tables, last = parts
        container: Any = self.doc
        for part in tables:
            inner = container.get(part)
            if inner is None:
                inner = tomlkit.inline_table()
                _put(container, part, inner)
                inner = container[part]
            elif not isinstance(inner, Mapping):
                msg = f"config key {'.'.join(parts)!r}: {part!r} is not a table"
                raise ConfigError(".".join(parts), value, msg)
            container = inner
        _put(container, last, _item(value))

    def remove(self, parts: Sequence[str]) -> bool:
        """Remove the key at `parts` and the tables that removal leaves empty; False if unset."""
        trail: list[Any] = [self.doc]
        for part in parts[:-1]:
            inner = trail[-1].get(part)
            if not isinstance(inner, Mapping):
                return False
            trail.append(inner)
        if parts[-1] not in trail[-1]:
            return False
        del trail[-1][parts[-1]]
        for depth in range(len(parts) - 1, 0, -1):
            if not trail[depth]:
                del trail[depth - 1][parts[depth - 1]]
        return True

    def text(self) -> str:
        return tomlkit.dumps(self.doc)

    def write(self, path: Path | None = None) -> None:
        """Write atomically (a temp file in the same folder, then a rename), mode 0600: the
        file may hold key hashes and node keys."""
        write_text_atomically(path or self.path, self.text())


def _item(value: Any) -> Any:
    """A TOML item for `value`: lists of tables become inline arrays, one entry per line, so
    they never open `[[...]]` sections at the end of the file."""
    if isinstance(value, Mapping):
        inline = tomlkit.inline_table()
        inline.update({k: _item(v) for k, v in value.items()})
        return inline
    if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        array = tomlkit.array()
        for entry in value:
            inline = tomlkit.inline_table()
            inline.update(entry)
            array.append(inline)
        return array.multiline(True)
    return tomlkit.item(value)


def _put(container: Any, key: str, item: Any) -> None:
    """Replace `key` where it stands, or add it; tomlkit puts a new plain value before the
    container's first sub-table (after it, TOML would read it as that table's)."""
    old = container.get(key)
    if isinstance(old, Table | AoT) and not isinstance(item, Table | AoT):
        del container[key]  # a `[[key]]` section at the end: the plain value moves up
    container[key] = item
