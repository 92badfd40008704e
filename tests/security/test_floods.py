"""One unauthenticated host attacking a real `sollol run` gateway (header floods, slow loris,
idle keep-alive floods, silent connections, dashboard event streams) while a client with a key
keeps asking `/api/version` on new connections (issue 27, finding 5).

Each test measures the keyed client's median latency and success rate before the attack and
during it, in the same test: every request must succeed during the attack too, and the median
stay within a generous multiple of the baseline (no absolute time limits). The attacker's sockets
are bound to other loopback addresses (127.0.0.2, or 127.0.1.x for many hosts), so the gateway
sees it as another client. The gateway's memory is read from /proc/<pid>/status.
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable

import attrs
import httpx
import pytest

from sollol.config import write_file
from sollol.core.access import hash_key, new_key
from sollol.core.processes import free_port, wait_http
from sollol.testing.gauges import rss_bytes

KEY = new_key()
ATTACKER = "127.0.0.2"
MANY = [f"127.0.1.{i}" for i in range(1, 101)]
READ_LIMIT = 60.0
SLOTS = 100  # max_connections: every attack below opens three times as many
SAMPLES = 20
HEAD_LIMIT = 16 * 1024
FLOOD_BYTES = 96 * 1024 * 1024  # the attack sent 99 MiB
PER_CONNECTION = 16 * 1024 * 1024  # (an unbounded gateway would take all of it)
MEMORY_LIMIT = 32 * 1024 * 1024  # the issue measured +1,112 MiB


@attrs.frozen
class Target:
    url: str
    host: str
    port: int
    pid: int


@pytest.fixture
def target(processes, isolated_config, emulator) -> Callable[..., Target]:
    """Factory: a `sollol run` process in front of an emulated node, with `config`."""
    node = emulator(models=["m"])

    def start(keys: bool = True, **config: object) -> Target:
        port = free_port()
        keyring = [{"name": "client", "hash": hash_key(KEY)}] if keys else []
        write_file(isolated_config, {"ollama_nodes": [node.address], "api_keys": keyring,
                                     "model_sharding_enabled": False,
                                     "max_connections": SLOTS, **config})
        proc = processes.start("sollol-run", [sys.executable, "-m", "sollol", "run",
                                              "--port", str(port)], env=dict(os.environ))
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/", process=proc, timeout=120)
        return Target(url, "127.0.0.1", port, proc.pid)

    return start


def keyed_client(target: Target, count: int = SAMPLES) -> tuple[float, float]:
    """Median seconds and share of 200s for `count` keyed requests, each on a new connection."""
    times, ok = [], 0
    with httpx.Client(timeout=READ_LIMIT, headers={"Authorization": f"Bearer {KEY}"},
                      limits=httpx.Limits(max_keepalive_connections=0)) as client:
        for _ in range(count):
            started = time.perf_counter()
            with contextlib.suppress(httpx.TransportError):
                ok += client.get(target.url + "/api/version").status_code == 200
            times.append(time.perf_counter() - started)
    return statistics.median(times), ok / count


def assert_unaffected(baseline: tuple[float, float], loaded: tuple[float, float]) -> None:
    assert baseline[1] == 1.0, baseline
    assert loaded[1] == 1.0, f"the keyed client got {loaded[1]:.0%} answers under attack"
    assert loaded[0] < baseline[0] * 8 + 0.1, (baseline, loaded)


def attacker_socket(target: Target, source: str = ATTACKER) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(READ_LIMIT)
    sock.connect((target.host, target.port))
    return sock


def read_reply(sock: socket.socket) -> bytes:
    """One response head and its Content-Length body (b"" when the gateway closed)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        body += sock.recv(65536)
    return head


class Background:
    """Runs `work(stopped)` on a thread for the length of a `with` block."""

    def __init__(self, work: Callable[[threading.Event], None]) -> None:
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=work, args=(self.stopped,), daemon=True)

    def __enter__(self) -> Background:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()


# ---- header floods


@attrs.define
class HeaderFlood:
    """Endless heads, one connection after another, in every shape: a header line, many small
    headers, a URL; each connection sends until the gateway closes it."""

    target: Target
    sent: int = 0
    refused: int = 0

    SHAPES = ((b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nx-a: ", b"a" * 65536),
              (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"x-b: 1\r\n" * 8192),
              (b"GET /", b"u" * 65536))

    def run(self, stopped: threading.Event) -> None:
        """Until stopped, and at least `FLOOD_BYTES` in all."""
        shape = 0
        while not (stopped.is_set() and self.sent >= FLOOD_BYTES):
            start, unit = self.SHAPES[shape % len(self.SHAPES)]
            shape += 1
            with attacker_socket(self.target) as sock:
                try:
                    sock.sendall(start)
                    for _ in range(PER_CONNECTION // len(unit)):
                        self.sent += sock.send(unit)
                except OSError:  # closed by the gateway (431, then a reset)
                    self.refused += 1


def test_a_header_flood_neither_grows_memory_nor_slows_a_keyed_client(target) -> None:
    gw = target(max_header_bytes=HEAD_LIMIT, max_headers=100)
    baseline = keyed_client(gw)
    before = rss_bytes(gw.pid)
    flood = HeaderFlood(gw)
    with Background(flood.run):
        loaded = keyed_client(gw)
    after = rss_bytes(gw.pid)
    print(f"header flood: {flood.sent / 2**20:.0f} MiB on {flood.refused} connections; "
          f"gateway RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB; keyed client median "
          f"{baseline[0] * 1000:.1f} -> {loaded[0] * 1000:.1f} ms")
    assert flood.sent >= FLOOD_BYTES and flood.refused > 1
    assert after - before < MEMORY_LIMIT, f"RSS grew by {(after - before) / 2**20:.0f} MiB"
    assert_unaffected(baseline, loaded)


# ---- connections held: idle keep-alive, silent, slow loris, event streams


def hold(target: Target, count: int, sources: list[str], opening: bytes | None) -> dict:
    """`count` attacker connections spread over `sources`, each sending `opening` (a whole
    request: its answer is read, and the connection kept alive) or nothing."""
    held: dict[str, list] = {"open": [], "answers": []}
    for i in range(count):
        try:
            sock = attacker_socket(target, sources[i % len(sources)])
            if opening is not None:
                sock.sendall(opening)
                if opening.endswith(b"\r\n\r\n"):
                    held["answers"].append(read_reply(sock)[:12])
        except OSError:
            continue
        held["open"].append(sock)
    return held


def trickle(socks: list[socket.socket]) -> Callable[[threading.Event], None]:
    def work(stopped: threading.Event) -> None:
        while not stopped.wait(0.2):
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.send(b"a")
    return work


ROOT = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
SLOW = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nx-slow: "


@pytest.mark.parametrize(("attack", "sources"), [
    ("idle keep-alive", [ATTACKER]), ("idle keep-alive", MANY),
    ("silent", [ATTACKER]), ("silent", MANY), ("slow loris", [ATTACKER]),
])
def test_held_connections_leave_a_keyed_client_served(target, attack, sources) -> None:
    gw = target(header_timeout=300)  # slow and silent attackers are not timed out meanwhile
    baseline = keyed_client(gw)
    opening = {"idle keep-alive": ROOT, "silent": None, "slow loris": SLOW}[attack]
    held = hold(gw, SLOTS * 3, sources, opening)
    try:
        if attack == "idle keep-alive":  # the attacker did fill every slot
            assert held["answers"].count(b"HTTP/1.1 200") >= SLOTS
        with Background(trickle(held["open"]) if attack == "slow loris" else lambda s: None):
            loaded = keyed_client(gw)
    finally:
        for sock in held["open"]:
            sock.close()
    print(f"{attack} from {len(sources)} address(es): keyed client median "
          f"{baseline[0] * 1000:.1f} -> {loaded[0] * 1000:.1f} ms, {loaded[1]:.0%} answered")
    assert_unaffected(baseline, loaded)


def test_held_event_streams_leave_other_clients_served(target) -> None:
    gw = target(keys=False, max_event_streams=8)  # no keys: anyone may open the dashboard
    baseline = keyed_client(gw)
    opening = b"GET /sollol/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    held = hold(gw, SLOTS * 3, [ATTACKER], opening)
    try:
        streams = held["answers"].count(b"HTTP/1.1 200")
        assert streams == 8, held["answers"][:20]  # the rest: 503 (max_event_streams)
        assert held["answers"].count(b"HTTP/1.1 503") >= SLOTS
        loaded = keyed_client(gw)
    finally:
        for sock in held["open"]:
            sock.close()
    assert_unaffected(baseline, loaded)
