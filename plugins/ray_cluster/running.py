"""The Ray service of each gateway running in this process.

Discovery (`sollol_discover_backends`) is handed only a config; the service whose cluster runs
on that very config object answers. Other processes (the CLI) run no service.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .service import RayMembers

_lock = threading.Lock()
_services: list[RayMembers] = []


def register(service: RayMembers) -> None:
    with _lock:
        _services.append(service)


def unregister(service: RayMembers) -> None:
    with _lock:
        if service in _services:
            _services.remove(service)


def of_config(config: object) -> RayMembers | None:
    with _lock:
        return next((s for s in _services if s.cluster.config is config), None)


def of_cluster(cluster: object) -> RayMembers | None:
    with _lock:
        return next((s for s in _services if s.cluster is cluster), None)
