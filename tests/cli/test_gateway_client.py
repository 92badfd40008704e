"""One way to reach our own gateway: its address from the config, its key, never a proxy."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sollol.cli.gateway_client import call, gateway_address, gateway_client, item
from sollol.config import Config


@pytest.mark.parametrize(("host", "url"), [
    ("127.0.0.1", "http://127.0.0.1:11435"),
    ("gateway.lan", "http://gateway.lan:11435"),
    ("::1", "http://[::1]:11435"),
    ("[::1]", "http://[::1]:11435"),
    ("fd00::7", "http://[fd00::7]:11435"),
    ("0.0.0.0", "http://127.0.0.1:11435"),
    ("::", "http://127.0.0.1:11435"),
])
def test_the_gateway_address_brackets_ipv6_and_asks_a_wildcard_bind_on_loopback(
        host: str, url: str) -> None:
    assert gateway_address(Config(values={"gateway_host": host, "gateway_port": 11435})) == url


class _Recorder(BaseHTTPRequestHandler):
    """Answers every request with a small JSON object and keeps its path and key."""

    seen: list[tuple[str, str, str | None]]

    def _answer(self) -> None:
        self.seen.append((self.command, self.path, self.headers.get("Authorization")))
        body = b'{"removed": []}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[tuple[str, str, str | None]]]]:
    seen: list[tuple[str, str, str | None]] = []
    handler = type("Handler", (_Recorder,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_requests_carry_the_key_and_never_go_through_a_proxy_from_the_environment(
        recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    url, seen = recorder
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens: a proxy would fail
    monkeypatch.setenv("SOLLOL_KEY", " sk-admin \n")
    with gateway_client(url + "/") as client:
        assert client.get("/sollol/nodes").status_code == 200
    monkeypatch.delenv("SOLLOL_KEY")
    with gateway_client(url) as client:
        assert client.get("/sollol/overview").status_code == 200
    assert seen == [("GET", "/sollol/nodes", "Bearer sk-admin"),
                    ("GET", "/sollol/overview", None)]


def test_an_admin_call_keeps_an_ipv6_node_id_escaped_in_the_path(
        recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    url, seen = recorder
    monkeypatch.delenv("SOLLOL_KEY", raising=False)
    assert call(url, "DELETE", item("/sollol/nodes", "[::1]:11434")) == {"removed": []}
    assert seen == [("DELETE", "/sollol/nodes/%5B%3A%3A1%5D%3A11434", None)]
