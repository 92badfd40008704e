"""Cluster-join tests: a gateway with the cluster_join plugin, and the worker's side of the
protocol over real HTTP (the handshake module both sides use)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
from sollol_plugins.cluster_join.ca import fingerprint, generate_key_pem, public_key_pem
from sollol_plugins.cluster_join.handshake import (
    SIGNATURE_HEADER,
    check_answer,
    join_request,
    sign_message,
)
from sollol_plugins.cluster_join.tokens import JoinToken

DEVICES = [{"name": "CUDA0", "backend": "cuda", "memory_total": 24 << 30,
            "memory_free": 20 << 30}]


@attrs.define
class Worker:
    """A machine's side of joining, as `sollol join` speaks it."""

    url: str
    name: str
    key: bytes = attrs.field(factory=generate_key_pem)
    certificate: str | None = None
    answer: dict[str, Any] | None = None
    nonce: str = ""
    source: str | None = None
    """A 127.x.y.z source address to send from (another "machine" on loopback)."""

    def client(self) -> httpx.Client:
        transport = httpx.HTTPTransport(local_address=self.source) if self.source else None
        return httpx.Client(base_url=self.url, timeout=30, trust_env=False, transport=transport)

    def join_body(self, token: str, services: dict[str, Any] | None = None,
                  tunnel_port: int = 50053, devices: list[dict[str, Any]] | None = None,
                  ) -> dict[str, Any]:
        with self.client() as client:
            self.nonce = client.get("/sollol/cluster/challenge").json()["nonce"]
        return join_request(JoinToken.parse(token), self.nonce, self.name,
                            public_key_pem(self.key), tunnel_port, services or {},
                            DEVICES if devices is None else devices)

    def post_join(self, body: dict[str, Any]) -> httpx.Response:
        with self.client() as client:
            return client.post("/sollol/cluster/join", json=body)

    def join(self, token: str, **kwargs: Any) -> httpx.Response:
        reply = self.post_join(self.join_body(token, **kwargs))
        if reply.status_code in (200, 202):
            self.take(token, reply.json())
        return reply

    def take(self, token: str, answer: dict[str, Any]) -> None:
        check_answer(JoinToken.parse(token), answer, self.nonce)
        self.answer = answer
        self.certificate = answer.get("certificate")

    @property
    def pin(self) -> str:
        assert self.certificate is not None
        return fingerprint(self.certificate)

    def signed(self, what: str, payload: dict[str, Any] | None = None,
               key: bytes | None = None) -> tuple[bytes, str]:
        return sign_message(key or self.key, {"name": self.name, **(payload or {})})

    def send(self, what: str, body: bytes, signature: str) -> httpx.Response:
        with self.client() as client:
            return client.post(f"/sollol/cluster/{what}", content=body,
                               headers={SIGNATURE_HEADER: signature,
                                        "content-type": "application/json"})

    def message(self, what: str, payload: dict[str, Any] | None = None) -> httpx.Response:
        return self.send(what, *self.signed(what, payload))


@pytest.fixture
def join_gateway(pool_gateway: Callable[..., Any], tmp_path: Path) -> Callable[..., Any]:
    """`join_gateway(**config)`: a gateway with every installed plugin and its own cluster
    state dir (nodes only from joins)."""

    def start(**config: Any) -> Any:
        config.setdefault("cluster_state_dir", str(tmp_path / "cluster"))
        return pool_gateway(**config)

    return start


@pytest.fixture
def admin(join_gateway: Callable[..., Any]) -> Iterator[Callable[..., Any]]:
    """`admin(gateway)`: an httpx client for a gateway's admin endpoints (no keys on loopback),
    sending `X-Requested-With` as the CLI does (the forgery rule refuses changes without it)."""
    clients: list[httpx.Client] = []

    def make(gateway: Any) -> httpx.Client:
        client = httpx.Client(base_url=gateway.url, timeout=30, trust_env=False,
                              headers={"X-Requested-With": "sollol-tests"})
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def wait_until(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll `check` until it returns something true; AssertionError naming `what` after
    `timeout` (a deadline against hanging, not a performance limit)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            msg = f"timed out waiting for {what}"
            raise AssertionError(msg)
        time.sleep(0.05)


@pytest.fixture
def worker() -> type[Worker]:
    """The `Worker` class: `worker(gateway.url, "name")` speaks a joining machine's side."""
    return Worker


@pytest.fixture
def poll() -> Callable[..., Any]:
    """`poll(check, what, timeout=30)`: see `wait_until`."""
    return wait_until
