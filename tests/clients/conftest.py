"""Fixtures for the tests with real clients no one here wrote (see clients_support.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from clients_support import KEYS, ClientGateway


@pytest.fixture(scope="module")
def client_gateway(local_cluster: Any) -> Iterator[ClientGateway]:
    """The gateway over the module's local cluster (its pool node serves chat and embeddings),
    requiring access keys, the pool route only."""
    from sollol.core.runtime import ClusterRuntime
    from sollol.gateway import GatewayThread

    overrides = {**local_cluster.overrides(), "model_sharding_enabled": False, "api_keys": KEYS}
    thread = GatewayThread(ClusterRuntime.from_config(overrides=overrides)).start()
    try:
        assert local_cluster.models is not None
        name = local_cluster.models.small.name
        yield ClientGateway(thread.url, name, name)
    finally:
        thread.stop()


