"""Multi-host tests on one machine: an outer network namespace of the test's own, with one
namespace per host inside it, joined by veth links to a bridge.

Cutting a link or dropping a route in the machine's own namespace can send a test's packets to a
real network (the next hop is the default gateway). So a multi-host test runs in two steps:

1. `run_isolated(argv)` runs a command (usually `python -m pytest MODULE`) in a fresh network
   namespace with no default route and a private mount namespace (`unshare --net --mount`), with
   loopback up and a private tmpfs at `/run/netns`. Nothing it does can leave the machine, and
   every namespace and bind mount it makes vanishes with it.
2. Inside, `Network` (after `require_isolated()`) builds the hosts: `net.add_host("node-a")` makes
   namespace, veth pair and address (`10.N.0.x/24`); `host.start(name, argv)` runs a process in
   it; `host.cut()` / `restore()` take the link down and up (packets vanish, no reset: the hang
   case); `host.rate_limit("1mbit")` shapes both directions with `tbf`; `net.resolve(name,
   host)` edits the hosts file every process in the test sees. `net.close()` kills every
   process in every host namespace and deletes them, also after a failure.

Needs root, `unshare` (util-linux) and `ip`/`tc` (iproute2); `missing_tools()` names what is not
there. This kernel's `tc` has no `netem`: add latency with `sollol.testing.delay_proxy`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs

from sollol.core.processes import ManagedProcess, ProcessGroup, die_with_parent

__all__ = ["Host", "Network", "isolated", "missing_tools", "require_isolated", "run_isolated"]

TOOLS = ("unshare", "ip", "tc", "mount")
_SETUP = ("set -e; ip link set lo up; mkdir -p /run/netns; "
          "mount -t tmpfs sollol-netns /run/netns; exec \"$@\"")


def missing_tools() -> list[str]:
    """The commands a multi-host test needs that are not on PATH (install iproute2, util-linux)."""
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def _has_default_route() -> bool:
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/route").read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 2 and fields[1] == "00000000":
                return True
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/ipv6_route").read_text().splitlines():
            fields = line.split()
            if fields and fields[0] == "0" * 32 and fields[1] == "00" and fields[9] != "lo":
                return True
    return False


_PARENT_ENV = "NETNS_PARENT"  # not SOLLOL_*: test fixtures clear those


def _inode(kind: str, pid: str = "self") -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


def _own(kind: str) -> bool:
    """True when this process's `kind` namespace is not the machine's: not PID 1's when that
    can be read, else not the one `run_isolated` was called from (passed in the environment)."""
    mine = _inode(kind)
    machine = _inode(kind, "1")
    if machine is None:
        parent = dict(p.split("=") for p in os.environ.get(_PARENT_ENV, "").split(",") if "=" in p)
        machine = int(parent[kind]) if parent.get(kind, "").isdigit() else None
    return mine is not None and machine is not None and mine != machine


def isolated() -> bool:
    """True inside `run_isolated`: own network and mount namespaces, and no default route."""
    return _own("net") and _own("mnt") and not _has_default_route()


def require_isolated() -> None:
    """Raise unless this process runs inside `run_isolated` (never touch the machine's links)."""
    if not isolated():
        msg = ("multi-host tests must run inside their own network namespace with no default "
               "route: start them with sollol.testing.netns.run_isolated (unshare --net --mount)")
        raise RuntimeError(msg)


def run_isolated(
    argv: Sequence[str | os.PathLike[str]], *, env: Mapping[str, str] | None = None,
    cwd: Path | None = None, timeout: float | None = None, capture: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` in a fresh network + mount namespace (no default route, loopback up, private
    /run/netns); return its exit status and combined output (`capture=False`: its output goes
    to ours as it runs, for long benchmarks). Root only."""
    missing = missing_tools()
    if missing:
        msg = (f"multi-host tests need {', '.join(missing)}: install iproute2 and util-linux "
               "(apt-get install -y iproute2 util-linux)")
        raise RuntimeError(msg)
    parent = ",".join(f"{kind}={_inode(kind)}" for kind in ("net", "mnt"))
    env = {**(os.environ if env is None else env), _PARENT_ENV: parent}
    command = ["unshare", "--net", "--mount", "--propagation", "private", "--",
               "sh", "-c", _SETUP, "sh", *map(str, argv)]
    # die_with_parent: if the test is killed, the inner run dies too, and with it (parent-death
    # signals again) every host process, so the namespaces are freed
    output = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT} if capture else {}
    return subprocess.run(command, env=env, cwd=cwd, text=True, timeout=timeout, check=False,
                          preexec_fn=die_with_parent, **output)


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def _tc(namespace: str | None, *args: str) -> None:
    prefix = ["tc", "-n", namespace] if namespace else ["tc"]
    result = subprocess.run([*prefix, *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"tc {' '.join(args)}: {result.stderr.strip()}")


@attrs.define(eq=False)
class Host:
    """One machine of the test: a network namespace with one address on the bridge."""

    name: str
    namespace: str
    address: str
    link: str
    """The veth end in the outer namespace (on the bridge): what `cut` takes down."""
    network: Network

    def start(self, name: str, argv: Sequence[str | os.PathLike[str]], *,
              env: Mapping[str, str] | None = None, cwd: Path | None = None) -> ManagedProcess:
        """Start a process on this host (its own session, stopped with the network)."""
        args = ["ip", "netns", "exec", self.namespace, *map(str, argv)]
        return self.network.processes.start(f"{self.name}-{name}", args,
                                            env=None if env is None else dict(env), cwd=cwd)

    def cut(self) -> None:
        """Take the link down: packets to and from the host vanish, nobody sends a reset."""
        _ip("link", "set", self.link, "down")

    def restore(self) -> None:
        """Bring the link back up."""
        _ip("link", "set", self.link, "up")

    def rate_limit(self, rate: str, burst: str = "16kb", latency: str = "2s") -> None:
        """Shape both directions of the link with a token bucket (`tc ... tbf`)."""
        for namespace, device in ((None, self.link), (self.namespace, "eth0")):
            _tc(namespace, "qdisc", "replace", "dev", device, "root", "tbf", "rate", rate,
                "burst", burst, "latency", latency)

    def clear_rate_limit(self) -> None:
        for namespace, device in ((None, self.link), (self.namespace, "eth0")):
            with contextlib.suppress(RuntimeError):
                _tc(namespace, "qdisc", "del", "dev", device, "root")

    def pids(self) -> list[int]:
        """Every process running in this host's namespace."""
        result = subprocess.run(["ip", "netns", "pids", self.namespace], capture_output=True,
                                text=True, check=False)
        return [int(p) for p in result.stdout.split()]


@attrs.define(eq=False)
class Network:
    """A bridge in the (isolated) outer namespace, hosts on it, and a hosts file they share."""

    log_dir: Path
    subnet: int = 77
    """Hosts get 10.<subnet>.0.2, .3, ...; the outer namespace (the "router") is .1."""
    bridge: str = "sollol-br"
    hosts: dict[str, Host] = attrs.field(factory=dict)
    processes: ProcessGroup = attrs.field(default=None)
    names: dict[str, str] = attrs.field(factory=dict)
    _hosts_file: Path | None = None
    _started: bool = False

    def __attrs_post_init__(self) -> None:
        if self.processes is None:
            self.processes = ProcessGroup(log_dir=self.log_dir)

    @property
    def router(self) -> str:
        """The outer namespace's address on the bridge (clients and proxies in the test)."""
        return f"10.{self.subnet}.0.1"

    def start(self) -> Network:
        require_isolated()
        _ip("link", "add", self.bridge, "type", "bridge")
        self._started = True
        _ip("addr", "add", f"{self.router}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        # A hosts file of the test's own over /etc/hosts: the mount namespace is private, so
        # only this test's processes see it; `resolve` edits it in place (a bind mount follows
        # the inode, not the name).
        fd, name = tempfile.mkstemp(prefix="hosts-", dir=self.log_dir if self.log_dir.exists()
                                    else None)
        os.close(fd)
        self._hosts_file = Path(name)
        self._write_hosts()
        subprocess.run(["mount", "--bind", name, "/etc/hosts"], check=True)
        return self

    def add_host(self, name: str) -> Host:
        """A new namespace on the bridge with the next free address."""
        if name in self.hosts:
            raise ValueError(f"host {name!r} exists")
        index = len(self.hosts) + 2
        namespace, link = f"sollol-{name}", f"veth{index}"
        _ip("netns", "add", namespace)
        address = f"10.{self.subnet}.0.{index}"
        host = Host(name=name, namespace=namespace, address=address, link=link, network=self)
        self.hosts[name] = host
        _ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        _ip("link", "set", link, "master", self.bridge, "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        return host

    def resolve(self, name: str, host: Host | str | None) -> None:
        """Make `name` resolve to a host (or address) in every process of the test; None: stop
        resolving it."""
        if host is None:
            self.names.pop(name, None)
        else:
            self.names[name] = host.address if isinstance(host, Host) else host
        self._write_hosts()

    def _write_hosts(self) -> None:
        assert self._hosts_file is not None
        lines = ["127.0.0.1 localhost", *(f"{a} {n}" for n, a in self.names.items())]
        with self._hosts_file.open("r+" if self._hosts_file.exists() else "w") as out:
            out.truncate(0)
            out.write("\n".join(lines) + "\n")

    def close(self) -> None:
        """Stop every process (also ones not started through `Host.start`), delete every
        namespace and the bridge, unmount the hosts file. Safe to call twice."""
        self.processes.stop_all()
        for host in self.hosts.values():
            for pid in host.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(RuntimeError):
                _ip("netns", "delete", host.namespace)
        self.hosts.clear()
        if self._started:
            with contextlib.suppress(RuntimeError):
                _ip("link", "delete", self.bridge)
            self._started = False
        if self._hosts_file is not None:
            subprocess.run(["umount", "/etc/hosts"], check=False, capture_output=True)
            self._hosts_file.unlink(missing_ok=True)
            self._hosts_file = None

    def __enter__(self) -> Network:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
