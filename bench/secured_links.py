"""Secured links vs plain TCP for bench/sharding_lan.py (`--secured`): the same three shard hosts
behind the same `tbf` links, each trial on fresh rpc-servers, alternating plain and secured.

- plain: `ggml-rpc-server -H <host address>`, the coordinator's `--rpc` goes straight to it;
- secured: as `sollol join` runs it: the rpc-server on the host's 127.0.0.1 only, the worker's
  `TunnelServer` (mutual TLS 1.3, member certificate issued by the cluster CA) on the host's
  address, and on the gateway side one `TunnelEndpoint` per shard on 127.0.0.1 (a process of
  its own, like the gateway's tunnel loop) that the coordinator's `--rpc` names.

Per trial: first load (request to ready) and generation tokens/s through SOLLOL's sharding route,
plus the CPU seconds the tunnel processes used. `--profile` runs the gateway's tunnel process
under cProfile and prints where its time went.

    python bench/secured_links.py worker|gateway ...   (the roles, started by the bench)
"""

from __future__ import annotations

import asyncio
import cProfile
import json
import os
import pstats
import signal
import sys
import time
from pathlib import Path
from typing import Any

TUNNEL_PORT = 50053


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its reaped children), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


class Pki:
    """The cluster CA of the bench (as a gateway's state dir holds it) and members' files."""

    def __init__(self, folder: Path) -> None:
        from sollol_plugins.cluster_join.ca import ClusterCA

        self.folder = folder
        self.ca = ClusterCA.load_or_create(folder / "ca")

    def member(self, name: str) -> tuple[Path, Path, str]:
        """Key and certificate files for a member, and its pin (certificate fingerprint)."""
        from sollol_plugins.cluster_join.ca import fingerprint, generate_key_pem, public_key_pem

        key = generate_key_pem()  # made "on the worker": here, written for the worker process
        cert = self.ca.issue(name, public_key_pem(key))
        key_path, cert_path = self.folder / f"{name}.key", self.folder / f"{name}.pem"
        key_path.write_bytes(key)
        key_path.chmod(0o600)
        cert_path.write_text(cert)
        return cert_path, key_path, fingerprint(cert)


class SecuredShards:
    """The shard hosts of `Shards`, run as joined workers: rpc-server on loopback + tunnel."""

    def __init__(self, shards: Any, binary: Path, work: Path, port: int,
                 profile: bool = False) -> None:
        self.shards, self.binary, self.work, self.profile = shards, binary, work, profile
        self.port = port
        self.pki = Pki(work / "pki")
        self.members = {h.name: self.pki.member(h.name) for h in shards.hosts}
        self.procs: list[Any] = []
        self.tunnels: list[Any] = []
        self.addresses: list[str] = []
        self.rounds = 0

    def start(self) -> None:
        from sollol.core.processes import wait_port

        self.stop()
        self.rounds += 1
        ca = self.pki.ca
        port = self.port
        for host in self.shards.hosts:
            cert, key, _pin = self.members[host.name]
            rpc = host.start(f"rpc-secured-{self.rounds}", [
                self.binary, "-H", "127.0.0.1", "-p", str(port), "-t", "1"])
            tunnel = host.start(f"tunnel-{self.rounds}", [
                sys.executable, __file__, "worker", str(cert), str(key), str(ca.ca_cert_path),
                ca.gateway_fingerprint, host.address, str(TUNNEL_PORT), str(port)])
            self.procs.append(rpc)
            self.tunnels.append(tunnel)
        for host, tunnel in zip(self.shards.hosts, self.tunnels, strict=True):
            wait_port(host.address, TUNNEL_PORT, process=tunnel, timeout=30)
        links = [{"host": h.address, "port": TUNNEL_PORT, "pin": self.members[h.name][2]}
                 for h in self.shards.hosts]
        profile = str(self.work / f"gateway-tunnels-{self.rounds}.prof") if self.profile else ""
        # a name per round: each process gets a log of its own (the ports are read from it)
        gateway = self.shards.net.processes.start(f"gateway-tunnels-{self.rounds}", [
            sys.executable, __file__, "gateway", str(ca.gateway_cert_path),
            str(ca.gateway_key_path), str(ca.ca_cert_path), json.dumps(links), profile])
        self.tunnels.append(gateway)
        deadline = time.monotonic() + 30
        while "ports " not in gateway.log_text():
            if time.monotonic() > deadline or not gateway.alive():
                raise RuntimeError(f"gateway tunnels did not start: {gateway.log_text()}")
            time.sleep(0.05)
        line = next(x for x in gateway.log_text().splitlines() if x.startswith("ports "))
        # printed once every endpoint listens; no probe: a connection to an endpoint is a
        # connection to the rpc-server behind it, which serves one client at a time
        self.addresses = [f"127.0.0.1:{p}" for p in json.loads(line.removeprefix("ports "))]

    def tunnel_cpu(self) -> float:
        """CPU seconds the tunnel processes (both ends) used so far."""
        return round(sum(cpu_seconds(p.pid) for p in self.tunnels if p.alive()), 2)

    def stop(self) -> None:
        for proc in [*self.tunnels, *self.procs]:
            proc.stop()  # SIGTERM: the gateway role writes its profile on the way out
        self.procs, self.tunnels = [], []


async def compare(shards: Any, secured: SecuredShards, model: Path, work: Path, *,
                  binaries_dir: Path, tokens: int, rounds: int,
                  through_sollol: Any, log: Any) -> dict[str, Any]:
    """Alternate plain and secured trials (the order flips each round); every figure kept."""
    trials: dict[str, list[dict[str, Any]]] = {"plain": [], "secured": []}
    for index in range(rounds):
        order = ("plain", "secured") if index % 2 == 0 else ("secured", "plain")
        for mode in order:
            log(f"round {index + 1}/{rounds}: {mode} links")
            if mode == "plain":
                shards.start()
                addresses = shards.addresses
            else:
                secured.start()
                addresses = secured.addresses
            cpu_before = secured.tunnel_cpu() if mode == "secured" else 0.0
            result = await through_sollol(model, addresses, work / f"secured-{mode}-{index}",
                                          binaries_dir=binaries_dir, tokens=tokens)
            trial = {"ready_s": result["ready_s"], "tokens_per_s": result["tokens_per_s"]}
            if mode == "secured":
                trial["tunnel_cpu_s"] = round(secured.tunnel_cpu() - cpu_before, 2)
                secured.stop()
            else:
                shards.stop()
            log(f"  {mode}: {trial}")
            trials[mode].append(trial)
    summary = {mode: {"ready_s": [t["ready_s"] for t in ts],
                      "tokens_per_s": [t["tokens_per_s"] for t in ts]}
               for mode, ts in trials.items()}
    ready = {m: sum(s["ready_s"]) / len(s["ready_s"]) for m, s in summary.items()}
    speed = {m: sum(s["tokens_per_s"]) / len(s["tokens_per_s"]) for m, s in summary.items()}
    result = {"trials": trials, "load_ratio": round(ready["secured"] / ready["plain"], 3),
              "tokens_ratio": round(speed["secured"] / speed["plain"], 3)}
    if secured.profile:
        result["profile"] = top_of_profiles(sorted(work.glob("gateway-tunnels-*.prof")))
    return result


def top_of_profiles(paths: list[Path], count: int = 12) -> list[str]:
    """The functions the gateway's tunnel process spent most time in, over every round."""
    present = [str(p) for p in paths if p.exists()]
    if not present:
        return []
    stats = pstats.Stats(*present)
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:count]  # type: ignore[attr-defined]
    return [f"{tt:7.2f}s own {ct:7.2f}s cum {calls:>9} calls {fn[2]} ({Path(fn[0]).name}:{fn[1]})"
            for fn, (calls, _prim, tt, ct, _callers) in rows]


def lines(result: dict[str, Any], rate: str) -> list[str]:
    t = result["trials"]
    return [
        f"  {rate}: secured links vs plain TCP (alternating, fresh rpc-servers each): first "
        f"load {[x['ready_s'] for x in t['secured']]} s vs {[x['ready_s'] for x in t['plain']]}"
        f" s ({result['load_ratio']:.2f}x); tokens/s {[x['tokens_per_s'] for x in t['secured']]}"
        f" vs {[x['tokens_per_s'] for x in t['plain']]} ({result['tokens_ratio']:.2f}x); "
        f"tunnel CPU per trial {[x['tunnel_cpu_s'] for x in t['secured']]} s",
        *(f"    {row}" for row in result.get("profile", [])),
    ]


def _worker(cert: str, key: str, ca: str, gateway_pin: str, host: str, port: str,
            rpc_port: str) -> None:
    from sollol_plugins.cluster_join.tunnel import RPC_SERVICE, TlsIdentity, TunnelServer

    async def main() -> None:
        identity = TlsIdentity(Path(cert), Path(key), Path(ca))
        server = await TunnelServer(identity, gateway_pin, {RPC_SERVICE: int(rpc_port)},
                                    host=host, port=int(port)).start()
        await _until_sigterm()
        await server.stop()

    asyncio.run(main())


def _gateway(cert: str, key: str, ca: str, links: str, profile: str) -> None:
    from sollol_plugins.cluster_join.tunnel import RPC_SERVICE, TlsIdentity, TunnelEndpoint

    async def main() -> None:
        identity = TlsIdentity(Path(cert), Path(key), Path(ca))
        endpoints = [await TunnelEndpoint(identity, link["host"], link["port"], RPC_SERVICE,
                                          link["pin"]).start() for link in json.loads(links)]
        print("ports " + json.dumps([e.port for e in endpoints]), flush=True)
        await _until_sigterm()
        for endpoint in endpoints:
            await endpoint.stop()

    if not profile:
        asyncio.run(main())
        return
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        asyncio.run(main())
    finally:
        profiler.disable()
        profiler.dump_stats(profile)


async def _until_sigterm() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


if __name__ == "__main__":
    role, *rest = sys.argv[1:]
    {"worker": _worker, "gateway": _gateway}[role](*rest)
