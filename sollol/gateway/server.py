"""Serving the gateway with uvicorn: in the foreground (`sollol run`) or on a thread (tests)."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from sollol.core.access import BIND_FIX, open_bind
from sollol.core.logtext import OneLineFormatter
from sollol.errors import SollolError
from sollol.gateway.app import Gateway
from sollol.gateway.slow_clients import ClientLimits, guarded_protocol

if TYPE_CHECKING:
    from sollol.core.runtime import ClusterRuntime

log = logging.getLogger("sollol.gateway")

DEFAULT_GRACE = 10.0
"""Seconds in-flight requests may take to finish after SIGINT/SIGTERM before they are cut."""


def uvicorn_config(gateway: Gateway, host: str, port: int, *, grace: float = DEFAULT_GRACE,
                   log_level: str = "warning") -> uvicorn.Config:
    """uvicorn with httptools and uvloop when installed (the fastest pair it ships), no access
    log, no proxy-header rewriting (nothing sits in front of the gateway), and deadlines for
    slow clients (sollol.gateway.slow_clients)."""
    limits = ClientLimits.from_config(gateway.cluster.config)
    return uvicorn.Config(
        gateway, host=host, port=port, loop="auto", http=guarded_protocol(limits),
        lifespan="on", log_level=log_level, access_log=False, server_header=False,
        proxy_headers=False, timeout_graceful_shutdown=grace, timeout_keep_alive=30,
        # a queue of accepted-but-unserved connections beyond max_connections is refused
        # by the protocol; the listen backlog only absorbs bursts
        backlog=min(2048, max(128, limits.max_connections)),
    )


class _ForegroundServer(uvicorn.Server):
    """uvicorn's server, where a stop signal is a clean exit and a second one stops at once.

    (uvicorn re-raises the signal after shutting down, so SIGTERM would end the process with
    status 143; a requested stop that went well should exit 0.)
    """

    def __init__(self, config: uvicorn.Config, gateway: Gateway) -> None:
        super().__init__(config)
        self.gateway = gateway

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        if self.force_exit and self.gateway.dispatcher is not None:
            # A forced stop makes uvicorn skip both cancelling the in-flight requests and the
            # app's lifespan shutdown, so plugin shutdown hooks would never run and routes
            # would not stop their processes. Cut the requests (each is told why), then stop.
            for task in self.server_state.tasks:
                if not task.cancelling():  # those past the grace period are being told already
                    task.cancel()
            await self.lifespan.shutdown()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            log.warning("second stop signal: cutting in-flight requests now")
            self.force_exit = True
            return
        log.warning("stopping: in-flight requests have %.0f s to finish (signal again to cut "
                    "them now)", self.config.timeout_graceful_shutdown or 0)
        self.should_exit = True
        self.gateway.monitor.begin_shutdown()


def _check_bind(cluster: ClusterRuntime, host: str, insecure: bool) -> None:
    problem = open_bind(host, cluster.config["api_keys"])
    if problem and not insecure:
        raise GatewayError(f"refusing to start: {problem}; {BIND_FIX}")


def serve(cluster: ClusterRuntime, host: str, port: int, *, grace: float = DEFAULT_GRACE,
          log_level: str = "info", insecure: bool = False) -> Gateway:
    """Run the gateway until SIGINT/SIGTERM (SIGHUP re-reads the config); in-flight requests
    get `grace` s to finish. Refuses a bind beyond loopback without access keys unless
    `insecure`."""
    _check_bind(cluster, host, insecure)
    _log_to_stderr(logging.getLevelName(log_level.upper()))
    # the process is ours: tune its collector, and re-read the config on SIGHUP
    gateway = Gateway(cluster, tune_gc=True, reload_on_sighup=True, bind_host=host,
                      insecure=insecure)
    server = _ForegroundServer(uvicorn_config(gateway, host, port, grace=grace,
                                              log_level=log_level), gateway)
    server.run()
    if not server.started:
        raise GatewayError(f"the gateway could not start on {host}:{port} (see the log above)")
    return gateway


def _log_to_stderr(level: int) -> None:
    """SOLLOL's own log lines (nodes up and down, reloads, coordinators) beside uvicorn's."""
    logger = logging.getLogger("sollol")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(OneLineFormatter("%(levelname)s:     %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # uvloop is optional (not on Windows); asyncio's loop works too
        return asyncio.new_event_loop
    return uvloop.new_event_loop


class GatewayError(SollolError):
    """The gateway could not start (port in use, a route failed to start, ...)."""


class GatewayThread:
    """The gateway on its own thread and event loop, on a chosen port (tests, embedding)."""

    def __init__(self, cluster: ClusterRuntime, host: str = "127.0.0.1", port: int = 0, *,
                 grace: float = 2.0, insecure: bool = False) -> None:
        from sollol.core.processes import free_port

        _check_bind(cluster, host, insecure)
        self.host = host
        self.port = port or free_port(host)
        self.gateway = Gateway(cluster, bind_host=host, insecure=insecure)
        self.server = uvicorn.Server(uvicorn_config(self.gateway, self.host, self.port,
                                                    grace=grace))
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> GatewayThread:
        self._thread = threading.Thread(target=self._run, name=f"sollol-gateway-{self.port}",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                msg = f"gateway on {self.url} failed to start: {self._error or 'see the log'}"
                raise RuntimeError(msg)
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"gateway on {self.url} did not start in {timeout:.0f}s")
            time.sleep(0.02)
        return self

    def _run(self) -> None:
        try:
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                runner.run(self.server.serve())
        except BaseException as exc:
            self._error = exc

    def stop(self, timeout: float = 30.0) -> None:
        """Ask uvicorn to exit (draining requests), and wait for the cluster to stop."""
        self.server.should_exit = True
        self.gateway.monitor.begin_shutdown()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> GatewayThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
