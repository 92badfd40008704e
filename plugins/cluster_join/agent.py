"""`sollol join`: the worker agent. Joins with the token, keeps the machine in the cluster.

    start the rpc-server (127.0.0.1 only)  ->  join (challenge, proof; wait while pending)
    ->  tunnel server with the issued certificate  ->  signed heartbeats every interval

A heartbeat answered 404 (the gateway forgot us), 401 (it no longer knows our key) or 202 makes
it join again with the token; an unreachable gateway (restart, cut link) is retried until it
answers, and its signed heartbeat re-admits the machine. 403 (removed by an admin) and a refused
join stop the agent with the gateway's reason (`Stop`). SIGTERM/SIGINT: leave, then stop
everything it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from .agent_http import Answer, GatewayCalls, Unreachable
from .errors import JoinRefused
from .handshake import check_answer, join_request
from .machine import DeviceReport, PoolNode
from .rpc_child import ChildFailed, RpcChild, serve_argv
from .tokens import JoinToken
from .tunnel import RPC_SERVICE, TunnelServer, pool_service
from .worker_state import Membership, WorkerState

MAX_RETRY = 10.0
BUSY_RETRY = 30.0


class Stop(Exception):
    """The agent cannot go on; the message says why (the CLI exits non-zero with it)."""


@attrs.frozen
class JoinOptions:
    url: str
    token: JoinToken
    name: str
    listen_host: str = "0.0.0.0"
    listen_port: int = 50053
    rpc: bool = True
    rpc_port: int = 0
    devices: str | None = None
    threads: int | None = None
    pool_nodes: tuple[PoolNode, ...] = ()
    state_dir: Path = Path()
    config_file: Path | None = None
    announce: bool = True
    """Announce this machine on the LAN (mDNS `_sollol-worker._tcp`) while it runs."""


@attrs.define
class Agent:
    options: JoinOptions
    say: Callable[[str], None]
    report: DeviceReport = attrs.field(factory=DeviceReport)
    stopping: asyncio.Event = attrs.field(factory=asyncio.Event)
    membership: Membership | None = None
    rpc: RpcChild | None = None
    tunnel: TunnelServer | None = None
    _state: WorkerState = attrs.field(init=False)
    _calls: GatewayCalls = attrs.field(init=False)
    _cert: str | None = attrs.field(default=None, init=False)
    _fresh_join: bool = attrs.field(default=False, init=False)
    """Joined with the token and no heartbeat taken since: a refusal now is final."""
    _announcer: Any = attrs.field(default=None, init=False)
    """This machine's `_sollol-worker._tcp` announcement (lan.Announcer) while it runs."""

    def __attrs_post_init__(self) -> None:
        self._state = WorkerState(self.options.state_dir)
        self._calls = GatewayCalls(self.options.url, self._state.key())

    # ---- the whole life

    async def run(self) -> None:
        """Until SIGTERM/SIGINT (returns) or a refusal (raises Stop)."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        main = loop.create_task(self._main())
        stop = loop.create_task(self.stopping.wait())
        try:
            await asyncio.wait({main, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not main.done():
                main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await main  # raises its Stop, if any
        finally:
            stop.cancel()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            await self._shutdown(leave=main.cancelled() or main.exception() is None)

    async def _main(self) -> None:
        await self._start_rpc()
        # announced while it runs, joined or not: the gateway lists machines that are there
        # but not members (`sollol cluster discovered`); no secret in it
        if self.options.announce:
            from .lan import announce_worker_async

            self._announcer = await announce_worker_async(
                self.options.name, self.options.listen_port, self.options.listen_host)
        saved = self._state.load(self.options.token)
        if saved is not None and saved.url == self.options.url and \
                saved.name == self.options.name:
            self.membership = saved  # a restart: heartbeats re-admit us without the token
        while True:
            if self.membership is None:
                self.membership = await self._join()
            await self._serve_tunnel(self.membership)
            await self._heartbeats(self.membership)
            self.membership = None  # told to join again

    async def _shutdown(self, leave: bool) -> None:
        if leave and self.membership is not None:
            with contextlib.suppress(Unreachable, OSError):
                await self._calls.signed("leave", {"name": self.membership.name}, timeout=3)
                self.say(f"{self.membership.name} left the cluster")
        if self._announcer is not None:
            from .lan import stop_async

            await stop_async(self._announcer)  # the goodbye: off the discovered list at once
        if self.tunnel is not None:
            await self.tunnel.stop()
        if self.rpc is not None:
            await self.rpc.stop()
        await self._calls.close()

    async def _pause(self, seconds: float) -> None:
        """Wait `seconds`; CancelledError once stopping (asyncio.wait_for may swallow the
        cancellation that arrives with the event, and a loop would then spin)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)
        if self.stopping.is_set():
            raise asyncio.CancelledError

    # ---- what it serves

    async def _start_rpc(self) -> None:
        if not self.options.rpc:
            return
        from sollol.core.processes import free_port

        port = self.options.rpc_port or free_port()
        argv = serve_argv(port, self.options.devices, self.options.threads,
                          self.options.config_file)
        self.rpc = RpcChild(argv, dict(os.environ), port, self.say, self.stopping)
        try:
            await self.rpc.start()
        except ChildFailed as exc:
            raise Stop(f"cannot start this machine's rpc-server: {exc}") from None
        self.say(f"rpc-server listening on 127.0.0.1:{port} (loopback only)")

    def services(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if self.rpc is not None:
            found["rpc"] = {"devices": self.options.devices or "default"}
        found["pool"] = [node.as_dict() for node in self.options.pool_nodes]
        return found

    def _alpn(self) -> dict[str, int]:
        ports = {pool_service(i): node.port for i, node in enumerate(self.options.pool_nodes)}
        if self.rpc is not None:
            ports[RPC_SERVICE] = self.rpc.port
        return ports

    async def _devices(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.report.devices)

    async def _serve_tunnel(self, membership: Membership) -> None:
        cert = self._state.certificate()
        if self.tunnel is not None and cert == self._cert:
            self.tunnel.gateway_pin = membership.gateway_fingerprint
            return
        if self.tunnel is not None:
            await self.tunnel.stop()
        self.tunnel = TunnelServer(self._state.identity(), membership.gateway_fingerprint,
                                   self._alpn(), self.options.listen_host,
                                   self.options.listen_port)
        try:
            await self.tunnel.start()
        except OSError as exc:
            self.tunnel = None
            raise Stop(f"cannot listen on {self.options.listen_host}:"
                       f"{self.options.listen_port} for the gateway's links: {exc}") from None
        self._cert = cert

    # ---- joining

    async def _join(self) -> Membership:
        """Join with the token (retrying while the gateway is away; waiting while pending)."""
        token, name = self.options.token, self.options.name
        unreachable = False
        pause = 1.0
        while True:
            try:
                nonce = await self._calls.challenge()
                body = join_request(token, nonce, name, self._state.public_key(),
                                    self.options.listen_port, self.services(),
                                    await self._devices())
                answer = await self._calls.join(body)
            except Unreachable as exc:
                if not unreachable:
                    self.say(f"cannot reach the gateway ({exc}); retrying")
                    unreachable = True
                await self._pause(pause)
                pause = min(MAX_RETRY, pause * 2)
                continue
            if answer.status == 429:
                self.say(f"the gateway is limiting joins from this address ({answer.error}); "
                         f"retrying in {BUSY_RETRY:.0f} s")
                await self._pause(BUSY_RETRY)
                continue
            if answer.status in (200, 202):
                self._prove(answer, nonce)
            if answer.status == 202:
                answer = await self._wait_approval(answer, nonce)
                if answer is None:
                    continue  # the gateway dropped the pending join: join again
            if answer.status == 200:
                membership = self._keep(answer)
                self._fresh_join = True
                self.say(f"joined {self.options.url} as {membership.name}")
                return membership
            raise Stop(f"the gateway refused to let {name!r} join (HTTP {answer.status}): "
                       f"{answer.error}")

    def _prove(self, answer: Answer, nonce: str) -> None:
        try:
            check_answer(self.options.token, answer.data, nonce)
        except JoinRefused as exc:
            raise Stop(f"{self.options.url} is not the gateway this token is for: {exc}") \
                from None

    def _keep(self, answer: Answer) -> Membership:
        try:
            return self._state.save(self.options.url, answer.data)
        except (JoinRefused, KeyError, ValueError) as exc:
            raise Stop(f"the gateway's answer cannot be used: {exc}") from None

    async def _wait_approval(self, answer: Answer, nonce: str) -> Answer | None:
        name = self.options.name
        interval = float(answer.data.get("heartbeat_interval") or 3.0)
        self.say(f"{name} waits for approval: on the gateway, `sollol cluster approve {name}`")
        while True:
            await self._pause(interval)
            try:
                answer = await self._calls.signed("status", {"name": name})
            except Unreachable:
                continue
            if answer.status == 202:
                continue
            if answer.status == 404:
                return None
            if answer.status == 200:
                self._prove(answer, nonce)
                return answer
            raise Stop(f"the gateway refused {name!r} (HTTP {answer.status}): {answer.error}")

    # ---- staying in

    async def _heartbeats(self, membership: Membership) -> None:
        """Heartbeat until the gateway wants a new join (returns) or refuses us (Stop)."""
        interval, lost = membership.heartbeat_interval, False
        while True:
            payload = {"name": membership.name, "devices": await self._devices(),
                       "services": self.services(), "tunnel_port": self.options.listen_port}
            try:
                answer = await self._calls.signed("heartbeat", payload)
            except Unreachable as exc:
                if not lost:
                    self.say(f"lost the gateway ({exc}); retrying until it is back")
                    lost = True
                await self._pause(min(interval, MAX_RETRY))
                continue
            if lost:
                self.say("the gateway answers again")
                lost = False
            if answer.status == 200:
                self._fresh_join = False
                interval = float(answer.data.get("heartbeat_interval") or interval)
            elif answer.status == 403:
                raise Stop(f"the gateway removed {membership.name!r} from the cluster: "
                           f"{answer.error}")
            elif answer.status in (202, 401, 404) and not self._fresh_join:
                self.say(f"the gateway does not take our heartbeat ({answer.error}); "
                         "joining again with the token")
                return
            else:
                raise Stop(f"the gateway refused the heartbeat of {membership.name!r} (HTTP "
                           f"{answer.status}): {answer.error}")
            await self._pause(interval)
