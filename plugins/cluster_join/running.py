"""The join service of each gateway running in this process (`sollol.core.services`).

Other processes (the CLI, an embedded cluster) run no service, so they see no members.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sollol.core.services import RunningServices

if TYPE_CHECKING:
    from .service import JoinService

SERVICES: RunningServices[JoinService] = RunningServices()
register, unregister = SERVICES.register, SERVICES.unregister
of_config, of_cluster = SERVICES.of_config, SERVICES.of_cluster
