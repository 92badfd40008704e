"""The gateway's member table: joined and pending machines, removed pins, last seqs; persisted.

`members.json` in the cluster state dir (0600) keeps what survives a restart: each machine's
public key, certificate and pin, where its tunnel listens and what it serves, and the last
message seq seen per name (so a message captured before a restart cannot be replayed after it).
Liveness (`last_seen`) is not kept: after a restart every member is `offline` until its next
signed heartbeat re-admits it.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import attrs

from .errors import JoinRefused
from .tokens import unreadable, write_private

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
POOL_KINDS = ("ollama", "openai")
MAX_DEVICES = 64


def check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise JoinRefused("name must be 1-63 letters, digits, '.', '_' or '-' (not first)", 400)
    return name


def check_port(value: object, what: str) -> int:
    if type(value) is not int or not 0 < value < 65536:
        raise JoinRefused(f"{what} must be a port number (1-65535)", 400)
    return value


def check_services(services: object) -> dict[str, Any]:
    """`{"rpc": {...} | absent, "pool": [{"kind": "ollama"|"openai", "port": int}]}`."""
    if not isinstance(services, dict):
        raise JoinRefused("services must be an object", 400)
    clean: dict[str, Any] = {}
    rpc = services.get("rpc")
    if rpc is not None:
        if not isinstance(rpc, dict):
            raise JoinRefused("services.rpc must be an object", 400)
        clean["rpc"] = {k: v for k, v in rpc.items() if isinstance(v, str | int | float)}
    pool = services.get("pool") or []
    if not isinstance(pool, list) or len(pool) > 8:
        raise JoinRefused("services.pool must be a list of at most 8 nodes", 400)
    clean["pool"] = []
    for node in pool:
        if not isinstance(node, dict) or node.get("kind") not in POOL_KINDS:
            raise JoinRefused("each services.pool node needs kind 'ollama' or 'openai'", 400)
        clean["pool"].append({"kind": node["kind"], "port": check_port(node.get("port"),
                                                                        "a pool node's port")})
    return clean


def check_devices(devices: object) -> list[dict[str, Any]]:
    """`[{"name", "backend", "memory_total", "memory_free"}]`, numbers in bytes."""
    if not isinstance(devices, list) or len(devices) > MAX_DEVICES:
        raise JoinRefused(f"devices must be a list of at most {MAX_DEVICES}", 400)
    clean = []
    for device in devices:
        if not isinstance(device, dict):
            raise JoinRefused("each device must be an object", 400)
        total, free = device.get("memory_total"), device.get("memory_free")
        if type(total) is not int or type(free) is not int or total < 0 or free < 0:
            raise JoinRefused("a device needs integer memory_total and memory_free", 400)
        clean.append({"name": str(device.get("name", ""))[:64],
                      "backend": str(device.get("backend", ""))[:32],
                      "memory_total": total, "memory_free": free})
    return clean


@attrs.define
class Member:
    """One machine that joined (or waits for approval)."""

    name: str
    public_key: str
    host: str
    tunnel_port: int
    services: dict[str, Any]
    state: str = "pending"
    """"pending" (approval), "member" (in the routes) or "offline" (timed out / restarted)."""
    certificate: str | None = None
    pin: str | None = None
    """The fingerprint of its certificate: its identity for the tunnel and for messages."""
    token_id: str = ""
    join_nonce: str = ""
    """The nonce of its join: the approval answer's proof is bound to it."""
    joined_at: float = attrs.field(factory=time.time)
    devices: list[dict[str, Any]] = attrs.field(factory=list)
    last_seen: float = 0.0
    """time.monotonic() of its last join or heartbeat (not persisted)."""
    ready: bool = False
    """It sent a heartbeat since it got its certificate, so its tunnel is up: only then do its
    services join the routes (their first probe would fail before). Not persisted."""

    def record(self) -> dict[str, Any]:
        return {k: v for k, v in attrs.asdict(self).items() if k not in ("last_seen", "ready")}

    def public(self) -> dict[str, Any]:
        """For listings: no key, no certificate body."""
        seen = time.monotonic() - self.last_seen if self.last_seen else None
        state = "joining" if self.state == "member" and not self.ready else self.state
        return {"name": self.name, "state": state, "host": self.host,
                "tunnel_port": self.tunnel_port, "services": self.services,
                "pin": self.pin, "token_id": self.token_id, "joined_at": self.joined_at,
                "seconds_since_heartbeat": seen, "devices": self.devices}


@attrs.define
class MemberStore:
    """Members by name, removed pins, last seqs: `members.json`."""

    path: Path
    members: dict[str, Member] = attrs.field(factory=dict)
    removed: dict[str, str] = attrs.field(factory=dict)
    """name -> the certificate (PEM) an admin revoked: its heartbeats are answered 403."""
    seqs: dict[str, int] = attrs.field(factory=dict)

    @classmethod
    def load(cls, path: Path) -> MemberStore:
        store = cls(path)
        if not path.exists():
            return store
        try:
            data = json.loads(path.read_text())
            for item in data.get("members", []):
                member = Member(**item)
                if member.state == "member":
                    member.state = "offline"  # until its next heartbeat
                store.members[member.name] = member
            store.removed = dict(data.get("removed", {}))
            store.seqs = {k: int(v) for k, v in data.get("seqs", {}).items()}
        except (ValueError, TypeError, AttributeError) as exc:
            raise unreadable(path, exc) from None
        return store

    def save(self) -> None:
        data = {"members": [m.record() for m in self.members.values()],
                "removed": self.removed, "seqs": self.seqs}
        write_private(self.path, json.dumps(data, indent=1).encode())
