"""What a `sollol join` tunnel costs on one link: throughput and round-trip latency, vs plain TCP.

Three processes, as in a real cluster: the worker (a `TunnelServer` in front of a loopback echo
or sink service), the gateway (a `TunnelEndpoint`), and this client. Measured on loopback:

- throughput: MiB/s of a bulk upload (client -> service, like a model load) and of a bulk
  download (service -> client), through the tunnel and direct to the service;
- latency: round-trip time of small request/reply ping-pongs (64 bytes each way, like llama.cpp
  RPC's per-token commands), through the tunnel and direct; median and 99th percentile.

    python bench/tunnel_link.py                 # 512 MiB each way, 5000 round trips
    python bench/tunnel_link.py --mib 128 --trips 1000 --json out.json
Everything it starts it stops. Results: docs/performance.md ("Secured shard links").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def _service(sock: socket.socket) -> None:
    """Per connection: first byte `e` echoes, `s` sinks N bytes then says done, `d` sends N."""
    import threading

    def handle(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            mode = conn.recv(1)
            size = int.from_bytes(conn.recv(8, socket.MSG_WAITALL), "little")
            if mode == b"e":
                while data := conn.recv(size):
                    conn.sendall(data)
            elif mode == b"s":
                left = size
                buffer = bytearray(CHUNK)
                while left:
                    left -= conn.recv_into(buffer, min(left, CHUNK))
                conn.sendall(b"k")
            elif mode == b"d":
                block = bytes(CHUNK)
                for _ in range(size // CHUNK):
                    conn.sendall(block)

    while True:
        conn, _ = sock.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def _role(role: str, folder: Path, port: int) -> None:
    """Run the worker or gateway end in this process; print its port; serve until killed."""
    from sollol_plugins.cluster_join.ca import ClusterCA
    from sollol_plugins.cluster_join.tunnel import RPC_SERVICE, TunnelEndpoint, TunnelServer

    ca = ClusterCA.load_or_create(folder / "ca")
    from sollol_plugins.cluster_join.tunnel import TlsIdentity

    async def main() -> None:
        if role == "worker":
            import threading

            listener = socket.create_server(("127.0.0.1", 0))
            threading.Thread(target=_service, args=(listener,), daemon=True).start()
            identity = TlsIdentity(folder / "w.pem", folder / "w.key", ca.ca_cert_path)
            server = await TunnelServer(identity, ca.gateway_fingerprint,
                                        {RPC_SERVICE: listener.getsockname()[1]},
                                        host="127.0.0.1", port=0).start()
            print(listener.getsockname()[1], server.address[1], flush=True)
        else:
            identity = TlsIdentity(ca.gateway_cert_path, ca.gateway_key_path, ca.ca_cert_path)
            pin = (folder / "w.pin").read_text()
            endpoint = await TunnelEndpoint(identity, "127.0.0.1", port, RPC_SERVICE,
                                            pin).start()
            print(endpoint.port, flush=True)
        await asyncio.Event().wait()

    if os.environ.get("TUNNEL_UVLOOP"):
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())


def _connect(port: int, mode: bytes, size: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(mode + size.to_bytes(8, "little"))
    return sock


def upload(port: int, mib: int) -> float:
    block = bytes(CHUNK)
    started = time.perf_counter()
    with _connect(port, b"s", mib * CHUNK) as sock:
        for _ in range(mib):
            sock.sendall(block)
        assert sock.recv(1) == b"k"
    return mib / (time.perf_counter() - started)


def download(port: int, mib: int) -> float:
    buffer = bytearray(CHUNK)
    started = time.perf_counter()
    with _connect(port, b"d", mib * CHUNK) as sock:
        left = mib * CHUNK
        while left:
            got = sock.recv_into(buffer)
            assert got, "closed early"
            left -= got
    return mib / (time.perf_counter() - started)


def round_trips(port: int, trips: int) -> list[float]:
    message = bytes(64)
    times = []
    with _connect(port, b"e", 64) as sock:
        for _ in range(trips + 100):
            started = time.perf_counter()
            sock.sendall(message)
            got = 0
            while got < 64:
                got += len(sock.recv(64 - got))
            times.append(time.perf_counter() - started)
    return times[100:]  # the first ones warm up the connection


def _start(args: list[str]) -> tuple[subprocess.Popen[str], list[int]]:
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, [int(x) for x in proc.stdout.readline().split()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--trips", type=int, default=5000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--role", choices=["worker", "gateway"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        _role(args.role, args.folder, args.port)
        return
    from sollol_plugins.cluster_join.ca import (
        ClusterCA,
        fingerprint,
        generate_key_pem,
        public_key_pem,
    )

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ca = ClusterCA.load_or_create(folder / "ca")
        key = generate_key_pem()
        cert = ca.issue("w", public_key_pem(key))
        (folder / "w.key").write_bytes(key)
        (folder / "w.pem").write_text(cert)
        (folder / "w.pin").write_text(fingerprint(cert))
        worker, (direct, tunnel_port) = _start(["--role", "worker", "--folder", tmp])
        gateway, (endpoint,) = _start(["--role", "gateway", "--folder", tmp,
                                       "--port", str(tunnel_port)])
        try:
            for name, port in (("direct", direct), ("tunnel", endpoint)):
                rtt = round_trips(port, args.trips)
                results[name] = {
                    "upload_mib_s": round(upload(port, args.mib), 1),
                    "download_mib_s": round(download(port, args.mib), 1),
                    "rtt_median_us": round(statistics.median(rtt) * 1e6, 1),
                    "rtt_p99_us": round(statistics.quantiles(rtt, n=100)[98] * 1e6, 1),
                }
        finally:
            for proc in (gateway, worker):
                proc.terminate()
                proc.wait(10)
    results["added_rtt_median_us"] = round(results["tunnel"]["rtt_median_us"]
                                           - results["direct"]["rtt_median_us"], 1)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
