"""Which rpc-servers a coordinator of this process is attached to right now.

An rpc-server serves one client; a probe over a second connection hangs until it times out. Every
probe in this process (the route's health loop, the `sollol_check_health` hook, discovery) asks
here first, and reports an attached backend's health from its coordinator instead.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator, Mapping

_lock = threading.Lock()
_owners: dict[str, str] = {}


def attach(addresses: Iterable[str], owner: str) -> None:
    with _lock:
        for address in addresses:
            _owners[address] = owner


def detach(addresses: Iterable[str]) -> None:
    with _lock:
        for address in addresses:
            _owners.pop(address, None)


def owner_of(address: str) -> str | None:
    """The coordinator (as text) attached to `address`, or None."""
    with _lock:
        return _owners.get(address)


@contextlib.contextmanager
def holding(owners: Mapping[str, str]) -> Iterator[None]:
    """Each address attached to its owner inside the block only, for a look rather than a
    coordinator's lifetime (left attached, a later rpc-server on the same port would never be
    probed). An address attached already keeps its owner, before and after."""
    with _lock:
        mine = [a for a in owners if a not in _owners]
        _owners.update({a: owners[a] for a in mine})
    try:
        yield
    finally:
        detach(mine)


def all_owners() -> dict[str, str]:
    """Every attached address and its owner (what tests check is empty between tests)."""
    with _lock:
        return dict(_owners)
