"""Bounded label values: a metric gets one series per known name, and one more for the rest."""

from __future__ import annotations

import attrs

OTHER = "other"
"""The value every unknown or excess name folds into."""


@attrs.define
class BoundedLabels:
    """Hands out at most `limit` distinct label values; anything beyond becomes `OTHER`.

    A name is admitted only when the caller vouches for it (`admit=True`: a backend served it),
    so clients asking for made-up models cannot grow a metric's series. An admitted name keeps
    its own value for the life of the process: a series never changes its label.
    """

    limit: int
    max_length: int = 200
    _known: dict[str, str] = attrs.field(factory=dict)

    def fold(self, name: str, admit: bool = True) -> str:
        label = self._known.get(name)
        if label is not None:
            return label
        if not admit or not name or len(name) > self.max_length or len(self._known) >= self.limit:
            return OTHER
        self._known[name] = name
        return name

    def __len__(self) -> int:
        return len(self._known)
