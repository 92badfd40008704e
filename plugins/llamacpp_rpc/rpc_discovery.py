"""Where rpc-servers come from: the config, loopback by default, and a CIDR only when named."""

from __future__ import annotations

import ipaddress
import logging
from concurrent.futures import ThreadPoolExecutor

from sollol.config import Config
from sollol.models import Backend, join_host_port

from . import attached
from .rpc_probe import ProbeError, ProtocolMismatch, probe
from .rpc_settings import backends

KIND = "rpc"
log = logging.getLogger("sollol.sharding")


def backend_for(address: str, source: str) -> Backend:
    """The Backend value for an rpc-server at host:port."""
    return Backend(id=f"{KIND}:{address}", kind=KIND, address=address, labels={"source": source})


def discover(config: Config) -> list[Backend]:
    """Configured rpc-servers, else answering loopback ones; plus a named CIDR's answering hosts."""
    found = [backend_for(a, "config") for a in backends(config)]
    ports: list[int] = config["rpc_discovery_ports"]
    timeout: float = config["rpc_probe_timeout"]
    if not found and config["rpc_discover_loopback"]:
        found += [backend_for(a, "loopback")
                  for a in _answering([f"127.0.0.1:{p}" for p in ports], timeout)]
    cidr = config["rpc_discovery_cidr"]
    if cidr:
        network = ipaddress.ip_network(cidr)
        hosts = list(network.hosts()) or [network.network_address]
        candidates = [join_host_port(str(h), p) for h in hosts for p in ports]
        known = {b.address for b in found}
        found += [backend_for(a, "cidr") for a in _answering(candidates, timeout)
                  if a not in known]
    return found




def _answering(addresses: list[str], timeout: float) -> list[str]:
    """The addresses where an rpc-server answers HELLO (or our own coordinator holds it)."""

    def check(address: str) -> bool:
        if attached.owner_of(address):
            return True
        host, _, port = address.rpartition(":")
        try:
            probe(host.strip("[]"), int(port), timeout)
        except ProtocolMismatch:
            return True  # an rpc-server, reported as incompatible by the route
        except ProbeError as exc:
            log.debug("no rpc-server at %s: %s", address, exc)
            return False
        return True

    if not addresses:
        return []
    with ThreadPoolExecutor(max_workers=min(32, len(addresses))) as pool:
        answers = list(pool.map(check, addresses))
    return [a for a, ok in zip(addresses, answers, strict=True) if ok]
