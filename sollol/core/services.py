"""The services plugins run for each cluster in this process, found by cluster or by config.

A plugin that runs something while a gateway runs (the join service, the Ray driver) starts it
in `sollol_startup` and stops it in `sollol_shutdown`. `sollol_discover_backends` is handed only a
config, so the service whose cluster runs on that very config object answers (a reload adopts the
new config before discovering again). Other processes (the CLI) run no service and see none.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Generic, Protocol, TypeVar

from sollol.models import Backend


class Service(Protocol):
    """What a registered service has: the cluster it runs for, the backends it offers now, and
    a way to stop."""

    cluster: Any
    backends: Sequence[Backend]

    async def stop(self) -> None: ...


S = TypeVar("S", bound=Service)


class RunningServices(Generic[S]):
    """One plugin's running services (a plugin module keeps one; thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._services: list[S] = []

    def register(self, service: S) -> None:
        with self._lock:
            self._services.append(service)

    def unregister(self, service: S) -> None:
        with self._lock:
            if service in self._services:
                self._services.remove(service)

    def of_config(self, config: object) -> S | None:
        """The service whose cluster runs on this very config object, if any."""
        with self._lock:
            return next((s for s in self._services if s.cluster.config is config), None)

    def of_cluster(self, cluster: object) -> S | None:
        """The service running for this cluster, if any."""
        with self._lock:
            return next((s for s in self._services if s.cluster is cluster), None)

    def backends(self, config: object) -> list[Backend] | None:
        """`sollol_discover_backends`' answer: the backends of the service running on this
        config, or None where none runs."""
        service = self.of_config(config)
        return list(service.backends) if service is not None else None

    async def stop(self, cluster: object) -> None:
        """`sollol_shutdown`'s work: unregister this cluster's service, then stop it."""
        service = self.of_cluster(cluster)
        if service is not None:
            self.unregister(service)
            await service.stop()
