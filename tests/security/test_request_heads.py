"""A request's head (request line, URL, headers) is bounded in bytes and in fields, however its
bytes are cut into packets: at the limit it is served, one byte or one field more is a JSON 431
and the connection is closed. Bodies, and requests after the first on a connection, are not
counted against a head.

uvicorn's httptools protocol grows the URL and each header by concatenation, without a limit
(issue 27: one endless header line took the gateway from 63 MiB to 1,175 MiB); the memory side is
measured on a real `sollol run` process in tests/security/test_floods.py.
"""

from __future__ import annotations

import itertools
import json
import re
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

HEAD_LIMIT = 4096
MAX_HEADERS = 20
READ_LIMIT = 60.0
CLOSE = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
SPLITS = settings(suppress_health_check=[HealthCheck.function_scoped_fixture],
                  max_examples=40, deadline=None)


@pytest.fixture
def small(gateway):
    return gateway(max_header_bytes=HEAD_LIMIT, max_headers=MAX_HEADERS)


def head_of(size: int, *, fields: int = 1, path: str = "/") -> bytes:
    """`GET path` with `fields` headers (Host first), padded to exactly `size` bytes."""
    start = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
    extra = b"".join(b"x-f%d: v\r\n" % i for i in range(fields - 2))
    pad = size - len(start) - len(extra) - len(b"x-pad: \r\n\r\n")
    assert pad >= 0
    return start + extra + b"x-pad: " + b"p" * pad + b"\r\n\r\n"


def exchange(gw, packets: list[bytes]) -> bytes:
    """Send `packets` one by one on a new connection, then a `CLOSE` request (answered 200
    unless the gateway closed first); everything until the gateway closes."""
    with socket.create_connection((gw.host, gw.port)) as sock:
        sock.settimeout(READ_LIMIT)
        try:
            for packet in [*packets, CLOSE]:
                sock.sendall(packet)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed early, after its answer: read that
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except ConnectionResetError:
            pass
    return reply


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def statuses(reply: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", reply)]


def assert_431(reply: bytes, setting: str) -> None:
    """One 431 naming `setting`, then the connection closed (nothing after it answered)."""
    assert statuses(reply) == [431], reply[:300]
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431"), reply[:200]
    assert b"connection: close" in head.lower()
    assert setting in json.loads(body)["error"]


@SPLITS
@given(points=st.lists(st.integers(min_value=0), max_size=6))
def test_a_head_at_the_byte_limit_is_served_and_one_byte_more_is_431(small, points) -> None:
    assert statuses(exchange(small, cut(head_of(HEAD_LIMIT), points))) == [200, 200]
    assert_431(exchange(small, cut(head_of(HEAD_LIMIT + 1), points)), "max_header_bytes")


@SPLITS
@given(points=st.lists(st.integers(min_value=0), max_size=6))
def test_header_fields_past_max_headers_are_431(small, points) -> None:
    assert statuses(exchange(small, cut(head_of(1024, fields=MAX_HEADERS), points))) == [200] * 2
    assert_431(exchange(small, cut(head_of(1024, fields=MAX_HEADERS + 1), points)),
               "max_headers")


@pytest.mark.parametrize("shape", ["url", "header line", "many fields", "header name"])
def test_every_endless_head_is_cut_at_the_limit(small, shape) -> None:
    """Whatever part of the head never ends, the gateway answers 431 and closes; the sender
    is stopped after at most a few packets past the limit, not after all it meant to send."""
    start = {"url": b"GET /", "header line": b"GET / HTTP/1.1\r\nx-a: ",
             "many fields": b"GET / HTTP/1.1\r\n", "header name": b"GET / HTTP/1.1\r\nx"}[shape]
    unit = {"url": b"a" * 1024, "header line": b"a" * 1024, "header name": b"n" * 1024,
            "many fields": b"".join(b"x-%d: 1\r\n" % i for i in range(100))}[shape]
    packets = [start] + [unit] * 1024  # a megabyte or more: far past the limit in any shape
    reply = exchange(small, packets)
    assert_431(reply, "max_headers" if shape == "many fields" else "max_header_bytes")


def test_bodies_and_pipelined_requests_are_not_counted_as_heads(small) -> None:
    body = b"{" + b" " * (HEAD_LIMIT * 8) + b"}"
    post = (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % len(body)) + body
    assert statuses(exchange(small, [post])) == [405, 200]  # head and body in one packet
    pipelined = b"".join(head_of(HEAD_LIMIT // 2) for _ in range(6))
    assert statuses(exchange(small, [pipelined])) == [200] * 7
    together = b"".join([post, head_of(HEAD_LIMIT), post, head_of(HEAD_LIMIT)])
    assert statuses(exchange(small, [together])) == [405, 200, 405, 200, 200]
