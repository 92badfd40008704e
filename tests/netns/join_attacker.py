"""The attacker host of tests/netns/netns_join.py: run in its namespace, prints what it got.

    join_attacker.py probe ADDRESS PORT CERT KEY   -> refused | timeout | rpc-answered |
                                                      tls-open | tls-refused
    join_attacker.py post URL BODY HEADERS_JSON    -> {"status": ..., "body": ...}
    join_attacker.py flood URL COUNT CONCURRENCY   -> {"401": n, "429": m, ...}

`probe` tries a plain connect, llama.cpp RPC's HELLO, a TLS handshake without a certificate and
one with CERT/KEY (a certificate of another CA); "tls-refused" means the port accepted TCP but
none of the three got a byte of any service. `flood` sends COUNT bad joins (wrong tokens with
fresh nonces, garbage bodies), CONCURRENCY at a time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import socket
import ssl
import struct
import sys
from collections import Counter

HELLO = struct.pack("<BQ", 14, 24) + bytes(24)
ALPN = ["sollol-rpc", "sollol-pool-0"]


def _connect(address: str, port: int) -> socket.socket | str:
    try:
        return socket.create_connection((address, port), timeout=3)
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "timeout"


def _answered(sock: socket.socket) -> bool:
    sock.settimeout(3)
    try:
        return bool(sock.recv(64))
    except (OSError, ssl.SSLError):
        return False


def _tls(address: str, port: int, cert: str | None, key: str | None) -> bool:
    """True when a TLS connection got application bytes back for an RPC HELLO."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(ALPN)
    if cert and key:
        context.load_cert_chain(cert, key)
    raw = _connect(address, port)
    if isinstance(raw, str):
        return False
    try:
        with context.wrap_socket(raw, server_hostname=address) as tls:
            tls.sendall(HELLO)
            return _answered(tls)
    except (OSError, ssl.SSLError):
        return False


def probe(address: str, port: int, cert: str, key: str) -> str:
    plain = _connect(address, port)
    if isinstance(plain, str):
        return plain
    with plain:
        plain.sendall(HELLO)
        if _answered(plain):
            return "rpc-answered"
    if _tls(address, port, None, None) or _tls(address, port, cert, key):
        return "tls-open"
    return "tls-refused"


def post(url: str, body: str, headers: dict[str, str]) -> dict[str, object]:
    import httpx

    reply = httpx.post(url, content=body.encode(), timeout=30, trust_env=False,
                       headers={"content-type": "application/json", **headers})
    return {"status": reply.status_code, "body": reply.text}


async def flood(url: str, count: int, concurrency: int) -> Counter[str]:
    import httpx

    statuses: Counter[str] = Counter()
    left = list(range(count))

    async def one(client: httpx.AsyncClient, index: int) -> None:
        if index % 2:
            body = os.urandom(64).hex()  # garbage
        else:
            challenge = await client.get("/sollol/cluster/challenge")
            nonce = challenge.json().get("nonce", "") if challenge.status_code == 200 else ""
            body = json.dumps({
                "token_id": secrets.token_hex(4), "nonce": nonce, "name": f"flood-{index}",
                "public_key": "x", "tunnel_port": 50053, "services": {}, "devices": [],
                "proof": base64.b64encode(os.urandom(32)).decode()})
        reply = await client.post("/sollol/cluster/join", content=body,
                                  headers={"content-type": "application/json"})
        statuses[str(reply.status_code)] += 1

    async def worker(client: httpx.AsyncClient) -> None:
        while left:
            index = left.pop()
            try:
                await one(client, index)
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] += 1

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, trust_env=False,
                                 limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return statuses


def main(argv: list[str]) -> None:
    mode, *args = argv
    if mode == "probe":
        print(probe(args[0], int(args[1]), args[2], args[3]))
    elif mode == "post":
        print(json.dumps(post(args[0], args[1], json.loads(args[2]))))
    else:
        print(json.dumps(asyncio.run(flood(args[0], int(args[1]), int(args[2])))))


if __name__ == "__main__":
    main(sys.argv[1:])
