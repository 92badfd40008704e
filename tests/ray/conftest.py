"""One real Ray cluster per test module (a head and a worker, on 127.0.0.2 and 127.0.0.3),
always stopped, with a check that none of its processes is left."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sollol.testing.ray_cluster import RAY_ENV, RayCluster, ray_available


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    """A head and one worker node; FAILS (never skips) without Ray installed."""
    if not ray_available():
        pytest.fail("Ray is missing: pip install -e '.[test]' (it brings `ray`)")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in RAY_ENV.items():  # the gateway's driver runs in this process
            patch.setenv(key, value)
        cluster = RayCluster.start(tmp_path_factory.mktemp("ray"), workers=1)
        try:
            yield cluster
        finally:
            cluster.stop()  # raises when a process of a node is left
    assert not cluster.leftovers()


@pytest.fixture
def ray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Ray env in this test too (the autouse config isolation clears nothing of it)."""
    for key, value in RAY_ENV.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def ray_gateway(sharding_config: Callable[..., Any], ray_cluster: RayCluster,
                ray_env: None) -> Iterator[Callable[..., Any]]:
    """Factory: a running gateway with the llama.cpp and Ray plugins on `ray_cluster`, and no
    rpc-server of its own; stopped when the test ends (if the test did not stop it)."""
    from sollol.core.plugin_manager import get_plugin_manager
    from sollol.core.runtime import ClusterRuntime
    from sollol.gateway import GatewayThread

    started: list[GatewayThread] = []

    def make(**more: Any) -> GatewayThread:
        plugins = ["llamacpp_rpc", "ray"]
        config = sharding_config([], plugins=plugins, ray_address=ray_cluster.address,
                                 ray_watch_interval=0.3, **more)
        gateway = GatewayThread(ClusterRuntime(config=config, pm=get_plugin_manager(plugins)))
        started.append(gateway)
        return gateway.start()

    try:
        yield make
    finally:
        for gateway in reversed(started):
            gateway.stop()

