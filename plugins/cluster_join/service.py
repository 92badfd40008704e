"""The gateway side of joining: tokens, joins, approvals, heartbeats, leaves, timeouts.

One `JoinService` per gateway (made by the `sollol_gateway_endpoints` hook). Joined members'
services become backends through `sollol_discover_backends` (see `backends`) and a live
re-discovery right after every change, so routes add and drop them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from sollol.models import Backend

from . import handshake
from .backends import backend_ids, member_backends, memory_reading
from .ca import ClusterCA, fingerprint
from .errors import JoinRefused
from .limits import FailureLimiter
from .links import MemberLinks
from .members import Member, MemberStore, check_devices, check_name, check_port, check_services
from .nonces import NonceStore
from .settings import JoinSettings
from .tokens import TokenStore

if TYPE_CHECKING:
    from sollol.core.runtime import ClusterRuntime

    from .lan_gateway import GatewayLan

log = logging.getLogger("sollol.cluster")
SWEEP_SECONDS = 1.0
SEQ_SAVE_SECONDS = 10.0


@attrs.define(eq=False)
class JoinService:
    """Everything the cluster endpoints do, on the gateway's event loop."""

    cluster: ClusterRuntime
    folder: Path
    tokens: TokenStore
    store: MemberStore
    nonces: NonceStore = attrs.field(factory=NonceStore)
    seqs: handshake.SeqGuard = attrs.field(factory=handshake.SeqGuard)
    limiter: FailureLimiter = attrs.field(factory=FailureLimiter)
    backends: tuple[Backend, ...] = ()
    """The members' services as backends (read by discovery, from a worker thread)."""
    lan: GatewayLan | None = None
    """The LAN announcement and worker browser (lan_gateway.py); None when off."""
    _ca: ClusterCA | None = None
    _links: MemberLinks | None = None
    _sync: asyncio.Lock = attrs.field(factory=asyncio.Lock)
    _sweeper: asyncio.Task[None] | None = None
    _seqs_dirty: bool = False
    _settings: tuple[object, JoinSettings] | None = None

    @classmethod
    def open(cls, cluster: ClusterRuntime, folder: Path) -> JoinService:
        service = cls(cluster, folder, TokenStore.load(folder / "tokens.json"),
                      MemberStore.load(folder / "members.json"))
        for name, seq in service.store.seqs.items():
            service.seqs.set_last(name, seq)
        return service

    @property
    def settings(self) -> JoinSettings:
        """The settings of the cluster's current config (a reload applies them at once)."""
        config = self.cluster.config
        if self._settings is None or self._settings[0] is not config:
            settings = JoinSettings.from_config(config)
            self._settings = (config, settings)
            self.limiter.limit, self.limiter.window = (settings.failure_limit,
                                                       settings.failure_window)
        return self._settings[1]

    @property
    def ca(self) -> ClusterCA:
        """The cluster CA, made on first need."""
        if self._ca is None:
            self._ca = ClusterCA.load_or_create(self.folder)
        return self._ca

    @property
    def links(self) -> MemberLinks:
        if self._links is None:
            from .tunnel import TlsIdentity

            ca = self.ca
            self._links = MemberLinks(TlsIdentity(ca.gateway_cert_path, ca.gateway_key_path,
                                                  ca.ca_cert_path))
        return self._links

    def start(self) -> None:
        """Start the timeout sweep (inside the gateway's event loop)."""
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="sollol-join")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._seqs_dirty:
            self._save()
        if self._links is not None:
            await self._links.close()
        if self.lan is not None:
            await self.lan.stop_async()

    def check_peer(self, peer: str) -> None:
        """JoinRefused(429) while `peer` is over the failure limit (of the current config)."""
        _ = self.settings  # a reloaded config's limits apply first
        self.limiter.check(peer)

    # ---- tokens (admin)

    def create_token(self, note: str = "", expires_in: float | None = None) -> str:
        token = self.tokens.create(self.ca.pin, note, expires_in)
        log.info("join token %s created%s", token.split(".")[0].removeprefix("sollol-join-"),
                 f" ({note})" if note else "")
        return token

    # ---- joining

    def challenge(self, peer: str) -> dict[str, Any]:
        return {"nonce": self.nonces.issue(peer), "ttl": self.nonces.ttl}

    async def join(self, body: Any, peer: str) -> tuple[int, dict[str, Any]]:
        """A join request: (HTTP status, answer). JoinRefused for a refusal."""
        if not isinstance(body, dict):
            raise JoinRefused("the join body must be a JSON object", 400)
        token_id = body.get("token_id")
        if not isinstance(token_id, str):
            raise JoinRefused("the join needs a token_id", 400)
        self.nonces.take(body.get("nonce"))
        key = self.tokens.key_for(token_id)
        handshake.check_join_proof(key, body)
        name = check_name(body.get("name"))
        public_key = body.get("public_key")
        if not isinstance(public_key, str):
            raise JoinRefused("the join needs a public_key (PEM)", 400)
        from .ca import load_public_key

        load_public_key(public_key)
        port = check_port(body.get("tunnel_port"), "tunnel_port")
        services, devices = check_services(body.get("services")), check_devices(
            body.get("devices", []))
        old = self.store.members.get(name)
        if old is not None and old.public_key.strip() != public_key.strip():
            raise JoinRefused(f"the name {name!r} is taken by another machine (another key); "
                              "join under another --name, or `sollol cluster remove "
                              f"{name}` first", 409)
        approved = old is not None and old.state != "pending"
        member = Member(name, public_key, peer, port, services, token_id=token_id,
                        join_nonce=body["nonce"], devices=devices)
        self.tokens.count_use(token_id)
        self.store.removed.pop(name, None)
        if self.settings.policy == "approve" and not approved:
            self.store.members[name] = member
            self._save()
            log.warning("cluster: %s (%s) joined with token %s and waits for approval "
                        "(`sollol cluster approve %s`)", name, peer, token_id, name)
            return 202, self._answer(member, key)
        await self._admit(member, fresh=True)
        log.info("cluster: %s (%s) joined with token %s", name, peer, token_id)
        return 200, self._answer(member, key)

    def _answer(self, member: Member, key: bytes) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "status": "pending" if member.state == "pending" else "member",
            "name": member.name, "ca_certificate": self.ca.ca_pem,
            "gateway_fingerprint": self.ca.gateway_fingerprint,
            "heartbeat_interval": self.settings.heartbeat_interval,
        }
        if member.certificate is not None and member.state != "pending":
            answer["certificate"] = member.certificate
        return handshake.sign_answer(key, answer, member.join_nonce)

    async def _admit(self, member: Member, fresh: bool) -> None:
        """Make `member` a member: certificate and tunnel endpoints; its services join the
        routes now when it is not `fresh` (a heartbeat brought it back), else with its first
        heartbeat (it starts its tunnel once it has the certificate)."""
        if fresh or member.certificate is None:
            member.certificate = self.ca.issue(member.name, member.public_key)
            member.pin = fingerprint(member.certificate)
        member.state, member.last_seen, member.ready = "member", time.monotonic(), not fresh
        self.store.members[member.name] = member
        self._save()
        await self.links.ensure(member)
        self._report_memory(member)
        await self._resync()

    async def approve(self, name: str) -> dict[str, Any]:
        member = self.store.members.get(name)
        if member is None or member.state != "pending":
            pending = ", ".join(n for n, m in self.store.members.items()
                                if m.state == "pending") or "none"
            raise JoinRefused(f"{name!r} is not waiting for approval (pending: {pending})", 404)
        await self._admit(member, fresh=True)
        log.info("cluster: %s approved", name)
        return member.public()

    async def remove(self, name: str) -> dict[str, Any]:
        """An admin removes a member: out of the routes, its certificate pin revoked."""
        member = self.store.members.pop(name, None)
        if member is None:
            raise JoinRefused(f"no member named {name!r}", 404)
        if member.certificate is not None:
            self.store.removed[name] = member.certificate
        await self._forget(member)
        log.warning("cluster: %s removed by an admin (its certificate is revoked)", name)
        return member.public()

    async def _forget(self, member: Member) -> None:
        self._save()
        if self._links is not None:
            await self._links.drop(member.name)
        for ident in self._ids(member):
            self.cluster.live_memory.forget(ident)
        await self._resync()

    # ---- signed member messages

    def _verified(self, body: bytes, signature: str | None) -> tuple[Member, dict[str, Any]]:
        """The member a signed message comes from and its payload; 404 unknown, 403 removed."""
        name = handshake.parse_message(body)["name"]
        member = self.store.members.get(name)
        if member is None:
            revoked = self.store.removed.get(name)
            if revoked is not None:
                handshake.verify_message(revoked, body, signature)
                raise JoinRefused(f"{name!r} was removed from the cluster by an admin; its "
                                  "certificate is revoked", 403)
            raise JoinRefused(f"{name!r} is not a member (join again with a token)", 404)
        key = member.certificate if member.state != "pending" else member.public_key
        payload = handshake.verify_message(key or member.public_key, body, signature)
        self.seqs.check(name, payload["seq"])
        self.store.seqs[name] = payload["seq"]
        self._seqs_dirty = True
        return member, payload

    async def heartbeat(self, body: bytes, signature: str | None, peer: str,
                        ) -> tuple[int, dict[str, Any]]:
        member, payload = self._verified(body, signature)
        if member.state == "pending":
            return 202, {"status": "pending"}
        devices = check_devices(payload.get("devices", member.devices))
        services = check_services(payload.get("services", member.services))
        port = payload.get("tunnel_port", member.tunnel_port)
        changed = (services != member.services or peer != member.host
                   or port != member.tunnel_port)
        member.devices, member.services, member.host = devices, services, peer
        member.tunnel_port = check_port(port, "tunnel_port")
        member.last_seen = time.monotonic()
        if member.state == "offline":
            log.info("cluster: %s is back (signed heartbeat from %s)", member.name, peer)
            await self._admit(member, fresh=False)
        elif not member.ready:  # its first heartbeat: its tunnel is up, its services go live
            member.ready = True
            if changed:
                self._save()
            await self.links.ensure(member)
            await self._resync()
        elif changed:
            self._save()
            await self.links.ensure(member)
            await self._resync()
        self._report_memory(member)
        return 200, {"status": "member", "heartbeat_interval": self.settings.heartbeat_interval}

    async def status(self, body: bytes, signature: str | None) -> tuple[int, dict[str, Any]]:
        """A pending machine polls: 202 while pending, 200 with its certificate once approved."""
        member, _payload = self._verified(body, signature)
        if member.state == "pending":
            return 202, {"status": "pending", "name": member.name}
        key = self.tokens.key_of(member.token_id)
        if key is None:
            raise JoinRefused(f"the token {member.token_id!r} of {member.name!r} is gone", 403)
        return 200, self._answer(member, key)

    async def leave(self, body: bytes, signature: str | None) -> dict[str, Any]:
        member, _payload = self._verified(body, signature)
        del self.store.members[member.name]
        await self._forget(member)
        log.info("cluster: %s left", member.name)
        return {"status": "left", "name": member.name}

    # ---- liveness, routes, memory

    async def _sweep(self) -> None:
        last_save = time.monotonic()
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            now = time.monotonic()
            try:
                await self.expire(now)
                if self._seqs_dirty and now - last_save >= SEQ_SAVE_SECONDS:
                    self._save()
                    last_save = now
            except Exception:  # the sweep must go on
                log.exception("cluster member sweep failed")

    async def expire(self, now: float) -> list[str]:
        """Take members silent for `member_timeout` out of the routes; their names."""
        silent = [m for m in self.store.members.values() if m.state == "member"
                  and now - m.last_seen > self.settings.member_timeout]
        for member in silent:
            member.state = "offline"
            log.warning("cluster: %s sent no heartbeat for %.0f s: out of the routes until it "
                        "comes back", member.name, self.settings.member_timeout)
            for ident in self._ids(member):
                self.cluster.live_memory.forget(ident)
        if silent:
            self._save()
            await self._resync()
        return [m.name for m in silent]

    def _ids(self, member: Member) -> list[str]:
        return backend_ids(member)

    def _report_memory(self, member: Member) -> None:
        reading = memory_reading(member.devices)
        if reading is not None:
            for ident in self._ids(member):
                self.cluster.live_memory.report(ident, reading)

    def _make_backends(self) -> tuple[Backend, ...]:
        if self._links is None:
            return ()
        live = [m for m in self.store.members.values() if m.state == "member" and m.ready]
        return tuple(b for m in live for b in member_backends(m, self._links.addresses(m.name)))

    async def _resync(self) -> None:
        """Hand the routes the members' backends now (adds and drops them live).

        A backend whose address changed (a machine that joined again got a new certificate, so
        new tunnel endpoints) leaves first: routes keep a known id's address.
        """
        async with self._sync:
            backends = self._make_backends()
            before = {b.id: b.address for b in self.backends}
            moved = {b.id for b in backends if before.get(b.id, b.address) != b.address}
            try:
                if moved:
                    self.backends = tuple(b for b in backends if b.id not in moved)
                    await self.cluster.membership.rediscover(prune=True)
                self.backends = backends
                await self.cluster.membership.rediscover(prune=True)
            except Exception:
                log.exception("cluster: re-discovery after a membership change failed")

    def _save(self) -> None:
        self._seqs_dirty = False
        self.store.save()

    def report(self) -> dict[str, Any]:
        """Members, pending machines and settings, for the admin listing."""
        members = [m.public() for m in self.store.members.values()]
        for entry in members:
            entry["backends"] = self._links.addresses(entry["name"]) if self._links else {}
        return {"members": members, "join_policy": self.settings.policy,
                "member_timeout": self.settings.member_timeout}
