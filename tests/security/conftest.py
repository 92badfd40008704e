"""A gateway with model-limited keys over an emulated Ollama node that holds a model they may
not use, for the scope suites (test_scope_*.py): one per module, stopped at its end. And the
browser suites' attacker: a page about cats on another loopback port."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import attrs
import httpx
import pytest

from sollol.core.access import hash_key, new_key

SECRET = "secret:7b"
"""The model no `tiny*` key may use, reach, list, copy or build from."""
ALIASES = {"tiny-fast": SECRET, "tiny-ok": "tiny:1b"}
FALLBACKS = {"tiny-gone": [SECRET], "tiny-mixed": [SECRET, "tiny:1b"]}
"""`tiny-gone` and `tiny-mixed` are on no node: their fallbacks are tried."""


@attrs.frozen
class ScopedCluster:
    """The gateway, its node and the keys: `user` and `admin` for every model, `limited` (an
    inference key) and `manager` (an admin key) for `tiny*` only."""

    url: str
    node: Any
    user: str
    admin: str
    limited: str
    manager: str

    def post(self, path: str, body: Any, key: str, **kwargs: Any) -> httpx.Response:
        content = body if isinstance(body, bytes) else None
        return httpx.request(kwargs.pop("method", "POST"), self.url + path,
                             json=None if content is not None else body, content=content,
                             headers={"Authorization": f"Bearer {key}",
                                      "Content-Type": "application/json"}, timeout=60, **kwargs)

    def get(self, path: str, key: str) -> httpx.Response:
        return httpx.get(self.url + path, headers={"Authorization": f"Bearer {key}"},
                         timeout=60)

    def served(self) -> dict[str, int]:
        """Inference requests the node ran, per model."""
        return dict(self.node.stats()["models"])

    @staticmethod
    def leaks(reply: httpx.Response, hidden: str = "secret") -> list[str]:
        """Where `hidden` shows in a reply: its body or any header value."""
        found = [f"body: {reply.text[:300]}"] if hidden in reply.text.lower() else []
        return found + [f"header {k}: {v}" for k, v in reply.headers.items()
                        if hidden in v.lower()]

    def models(self) -> set[str]:
        """The models the node holds now."""
        tags = httpx.get(self.node.url + "/api/tags", timeout=10).json()["models"]
        return {m["name"] for m in tags}


@pytest.fixture(scope="module")
def scoped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScopedCluster]:
    from sollol.core.runtime import ClusterRuntime
    from sollol.gateway import GatewayThread
    from sollol.testing.emulator import EmulatorNode

    keys = {name: new_key() for name in ("user", "admin", "limited", "manager")}
    api_keys = [
        {"name": "user", "hash": hash_key(keys["user"])},
        {"name": "root", "hash": hash_key(keys["admin"]), "admin": True},
        {"name": "bob", "hash": hash_key(keys["limited"]), "models": ["tiny*"]},
        {"name": "carol", "hash": hash_key(keys["manager"]), "admin": True,
         "models": ["tiny*"]},
    ]
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith(("SOLLOL_", "OLLAMA_")):
                patch.delenv(name)
        patch.setenv("SOLLOL_CONFIG", str(tmp_path_factory.mktemp("scope") / "config.toml"))
        node = EmulatorNode(models=["tiny:1b", SECRET],
                            library=["tiny-new", "secret-new"]).start()
        gateway = None
        try:
            overrides: dict[str, Any] = {
                "ollama_nodes": [node.address], "api_keys": api_keys, "model_aliases": ALIASES,
                "model_fallbacks": FALLBACKS, "health_interval": 0.3,
                "blob_dir": str(tmp_path_factory.mktemp("blobs"))}
            gateway = GatewayThread(ClusterRuntime.from_config(overrides=overrides)).start()
            yield ScopedCluster(gateway.url, node, **keys)
        finally:
            if gateway is not None:
                gateway.stop()
            node.stop()


@pytest.fixture
def cats_site() -> Iterator[int]:
    """An attacker's web server on loopback (a page about cats): its port."""
    class Cats(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html><body>cats</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Cats)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()  # its port is free again
        thread.join(10)
