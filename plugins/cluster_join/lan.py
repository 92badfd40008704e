"""Finding each other on the LAN with mDNS/DNS-SD (python-zeroconf).

- The gateway announces `_sollol._tcp.local.`: its HTTP port and addresses, TXT `version` and
  `pin` (the cluster CA's pin, the third part of a join token). A worker started with
  `sollol join --token T` and no URL calls `find_gateways()` and keeps the gateway whose pin is
  the token's: a stranger announcing `_sollol._tcp` on the LAN cannot pass for the gateway, and
  the worker checks the CA certificate against the pin again when it joins.
- A worker announces `_sollol-worker._tcp.local.` (TXT `name`, `version`; the port is its
  tunnel port) while `sollol join` runs; the gateway's `WorkerBrowser` keeps the set of
  announcing workers so an operator sees machines that are there but have not joined.

Announcements carry no secret: joining still needs the token. Nothing is announced for an
address on loopback (no one else could use it), and only on the addresses the service is bound
to. A hostile LAN can announce any number of services: the browser keeps at most `MAX_WORKERS`,
the newest first, and drops what it cannot parse.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from importlib.metadata import PackageNotFoundError, version

import attrs
import ifaddr
from zeroconf import (
    IPVersion,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)

__all__ = [
    "GATEWAY_TYPE", "WORKER_TYPE", "Announcer", "FoundGateway", "SeenWorker", "WorkerBrowser",
    "announce_gateway", "announce_worker", "announce_worker_async", "find_gateways",
    "lan_addresses", "stop_async",
]

log = logging.getLogger("sollol.cluster.lan")

GATEWAY_TYPE = "_sollol._tcp.local."
WORKER_TYPE = "_sollol-worker._tcp.local."
MAX_WORKERS = 256
"""Announcing workers the gateway remembers (a bound against a LAN full of announcements)."""
RECORD_TTL = 60
"""Seconds a worker's records live without a refresh: a worker that died without a goodbye
leaves the discovered list within about this time (python-zeroconf re-asks before expiry)."""
RESOLVE_MS = 1500
_LABEL_MAX = 63  # DNS-SD instance names are one DNS label


def _version() -> str:
    try:
        return version("sollol")
    except PackageNotFoundError:
        return "0.0.0"


@attrs.frozen
class FoundGateway:
    """A gateway that answered on the LAN: `url` to join, `pin` to check against the token."""

    url: str
    pin: str
    version: str
    name: str

    def __iter__(self) -> Iterator[str]:
        """Unpacks as `url, pin` (the shape `sollol join` reads)."""
        return iter((self.url, self.pin))


@attrs.frozen
class SeenWorker:
    """A machine announcing itself as a worker: where its tunnel listens, when it was seen."""

    name: str
    address: str
    port: int
    version: str
    seen: float
    """`time.time()` of its latest announcement."""

    def as_json(self) -> dict[str, object]:
        return {"name": self.name, "address": self.address, "port": self.port,
                "version": self.version, "seen": round(self.seen, 3)}


def lan_addresses(host: str) -> list[str]:
    """The IPv4 addresses a service bound to `host` can be reached on from the LAN: `host`
    itself, or for a wildcard bind every non-loopback address of this machine. Empty for
    loopback, IPv6-only or unknown hosts (nothing to announce)."""
    found = ([ip.ip for adapter in ifaddr.get_adapters() for ip in adapter.ips
              if isinstance(ip.ip, str)] if host in ("", "0.0.0.0", "::") else [host])
    usable = []
    for text in found:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue  # a host name: announcing it would need a lookup we cannot vouch for
        if address.version == 4 and not (address.is_loopback or address.is_unspecified
                                         or address.is_link_local):
            usable.append(text)
    return sorted(set(usable), key=lambda a: ipaddress.ip_address(a).packed)


def _label(text: str) -> str:
    return text.replace(".", "-")[:_LABEL_MAX] or "sollol"


@attrs.define
class Announcer:
    """One registered DNS-SD service, on its own zeroconf instance (its own thread), until
    `stop()`. `start()` blocks for the conflict probe (about a second): never call it on an
    event loop."""

    service_type: str
    instance: str
    addresses: list[str]
    port: int
    properties: Mapping[str, str]
    ttl: int | None = None
    _zc: Zeroconf | None = None
    _info: ServiceInfo | None = None

    def start(self) -> Announcer:
        # The host name in the SRV record is the instance's own, not the machine's: two
        # services on one machine (or machines sharing a name) must not merge address records,
        # and the machine's own mDNS responder (avahi) keeps its name.
        zc = Zeroconf(interfaces=list(self.addresses), ip_version=IPVersion.V4Only)
        ttls = {} if self.ttl is None else {"host_ttl": self.ttl, "other_ttl": self.ttl}
        info = ServiceInfo(
            self.service_type, f"{_label(self.instance)}.{self.service_type}", port=self.port,
            properties=dict(self.properties), addresses=[socket.inet_aton(a)
                                                          for a in self.addresses],
            server=f"{_label('sollol-' + self.instance)}.local.", **ttls)
        try:
            zc.register_service(info, allow_name_change=True)
        except BaseException:
            zc.close()
            raise
        self._zc, self._info = zc, info
        log.info("announcing %s on %s port %d", info.name, ", ".join(self.addresses), self.port)
        return self

    @property
    def name(self) -> str | None:
        """The registered instance name (zeroconf renames it on a conflict)."""
        return None if self._info is None else self._info.name

    def stop(self) -> None:
        """Send the goodbye and close the sockets. Safe to call twice."""
        zc, info, self._zc, self._info = self._zc, self._info, None, None
        if zc is None:
            return
        with contextlib.suppress(Exception):  # a goodbye lost on a dying link is no error
            if info is not None:
                zc.unregister_service(info)
        zc.close()


def announce_gateway(host: str, port: int, pin: str, *, name: str | None = None,
                     ) -> Announcer | None:
    """Start announcing a gateway bound to `host:port` whose cluster CA has `pin`; None when
    `host` is loopback-only (nobody on the LAN could reach it)."""
    addresses = lan_addresses(host)
    if not addresses:
        return None
    instance = name or f"sollol gateway on {socket.gethostname()}"
    return Announcer(GATEWAY_TYPE, instance, addresses, port,
                     {"version": _version(), "pin": pin}).start()


def announce_worker(name: str, port: int, host: str = "0.0.0.0") -> Announcer | None:
    """Start announcing a worker named `name` whose tunnel listens on `host:port`; None when
    that is loopback-only."""
    addresses = lan_addresses(host)
    if not addresses:
        return None
    return Announcer(WORKER_TYPE, name, addresses, port,
                     {"version": _version(), "name": name}, ttl=RECORD_TTL).start()


async def announce_worker_async(name: str, port: int, host: str = "0.0.0.0",
                                ) -> Announcer | None:
    """`announce_worker` from an event loop (the conflict probe runs in a thread). A network
    without multicast is a warning, never a reason for the worker to stop."""
    try:
        return await asyncio.to_thread(announce_worker, name, port, host)
    except OSError as exc:
        log.warning("not announcing %s on the LAN: %s", name, exc)
        return None


async def stop_async(announcer: Announcer | None) -> None:
    """Stop an announcement (the goodbye) from an event loop."""
    if announcer is not None:
        await asyncio.to_thread(announcer.stop)


def _text(info: ServiceInfo, key: str) -> str:
    value = (info.properties or {}).get(key.encode())
    return value.decode("utf-8", "replace")[:200] if isinstance(value, bytes) else ""


def _url(address: str, port: int) -> str:
    return f"http://{address}:{port}"


def _interfaces(interfaces: Iterable[str] | None) -> list[str]:
    chosen = lan_addresses("0.0.0.0") if interfaces is None else list(interfaces)
    if not chosen:
        msg = "no network interface with an IPv4 address to look for gateways on"
        raise OSError(msg)
    return chosen


def find_gateways(timeout: float = 3.0, *, interfaces: Iterable[str] | None = None,
                  ) -> list[FoundGateway]:
    """Gateways announcing `_sollol._tcp` on the LAN, found within `timeout` seconds (sorted by
    URL; one per gateway and address). `interfaces`: this machine's IPv4 addresses to ask on
    (default: every non-loopback one). Raises OSError when there is none. Blocking: call it
    from a thread, not an event loop."""
    zc = Zeroconf(interfaces=_interfaces(interfaces), ip_version=IPVersion.V4Only)
    names: set[str] = set()
    lock = threading.Lock()

    def changed(zeroconf: Zeroconf, service_type: str, name: str,
                state_change: ServiceStateChange) -> None:
        if state_change is not ServiceStateChange.Removed:
            with lock:
                names.add(name)

    try:
        browser = ServiceBrowser(zc, GATEWAY_TYPE, handlers=[changed])
        time.sleep(timeout)
        browser.cancel()
        with lock:
            found = sorted(names)
        gateways = set()
        for name in found:
            info = zc.get_service_info(GATEWAY_TYPE, name, timeout=RESOLVE_MS)
            if info is None or not info.port:
                continue
            for address in info.parsed_addresses(IPVersion.V4Only):
                gateways.add(FoundGateway(url=_url(address, info.port), pin=_text(info, "pin"),
                                          version=_text(info, "version"), name=name))
    finally:
        zc.close()
    return sorted(gateways, key=lambda g: (g.url, g.name))


@attrs.define
class WorkerBrowser:
    """The gateway's view of the workers announcing themselves, kept live by a zeroconf browser
    on its own thread. `workers()` is safe to call from any thread."""

    addresses: list[str]
    """This machine's IPv4 addresses to listen on (see `lan_addresses`)."""
    limit: int = MAX_WORKERS
    _seen: OrderedDict[str, SeenWorker] = attrs.field(factory=OrderedDict)
    _lock: threading.Lock = attrs.field(factory=threading.Lock)
    _zc: Zeroconf | None = None
    _browser: ServiceBrowser | None = None

    def start(self) -> WorkerBrowser:
        """Start browsing (blocks briefly to open the sockets: call it from a thread)."""
        self._zc = Zeroconf(interfaces=list(self.addresses), ip_version=IPVersion.V4Only)
        self._browser = ServiceBrowser(self._zc, WORKER_TYPE, handlers=[self._changed])
        return self

    def stop(self) -> None:
        """Stop browsing and close the sockets. Safe to call twice."""
        browser, zc, self._browser, self._zc = self._browser, self._zc, None, None
        if browser is not None:
            browser.cancel()
        if zc is not None:
            zc.close()

    def workers(self, exclude: Iterable[str] = ()) -> list[SeenWorker]:
        """The announcing workers, by name, leaving out the names in `exclude` (members)."""
        skip = set(exclude)
        with self._lock:
            seen = list(self._seen.values())
        return sorted((w for w in seen if w.name not in skip), key=lambda w: w.name)

    def _changed(self, zeroconf: Zeroconf, service_type: str, name: str,
                 state_change: ServiceStateChange) -> None:
        # runs on the browser's own thread: resolving here blocks only the browser
        if state_change is ServiceStateChange.Removed:
            with self._lock:
                self._seen.pop(name, None)
            return
        info = zeroconf.get_service_info(service_type, name, timeout=RESOLVE_MS)
        addresses = [] if info is None else info.parsed_addresses(IPVersion.V4Only)
        if info is None or not info.port or not addresses:
            return
        worker = SeenWorker(name=_text(info, "name") or name.removesuffix("." + service_type),
                            address=addresses[0], port=info.port,
                            version=_text(info, "version"), seen=time.time())
        with self._lock:
            self._seen.pop(name, None)
            self._seen[name] = worker
            while len(self._seen) > self.limit:
                self._seen.popitem(last=False)
