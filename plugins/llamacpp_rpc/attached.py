"""Which rpc-servers a coordinator of this process is attached to right now.

An rpc-server serves one client; a probe over a second connection hangs until it times out. Every
probe in this process (the route's health loop, the `sollol_check_health` hook, discovery) asks
here first, and reports an attached backend's health from its coordinator instead.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

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
