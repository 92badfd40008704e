"""Many emulated Ollama nodes in one process: one thread, one event loop, a port per node.

`EmulatorNode` gives each node a thread and a loop of its own, which is right for a handful of
nodes with faults; a pool of 64 or 256 nodes (the health-probe soak test, `bench/idle.py`) needs
them cheap::

    with EmulatorFleet(64, models=["m"]) as fleet:
        run_gateway(ollama_nodes=fleet.addresses)
        fleet.requests("/api/version")  # probes seen so far, all nodes together

As a process (prints one JSON line, {"addresses": [...]}, once every node accepts connections)::

    python -m sollol.testing.emulator_fleet --count 256 --model m
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import threading
from collections.abc import Sequence
from typing import Any

import attrs
import uvicorn

from sollol.testing.emulator_app import EmulatorApp
from sollol.testing.emulator_http import quiet_injected_drops
from sollol.testing.emulator_models import EmulatedModel, ModelStore
from sollol.testing.emulator_state import Speed

__all__ = ["EmulatorFleet", "main"]


@attrs.define
class EmulatorFleet:
    """`count` emulated Ollama nodes on loopback ports; `start()`, then `stop()`."""

    count: int
    models: tuple[str, ...] = attrs.field(default=("m",), converter=tuple)
    host: str = "127.0.0.1"
    tokens_per_second: float = 0.0
    response_tokens: int = 12
    apps: list[EmulatorApp] = attrs.field(factory=list, init=False)
    ports: list[int] = attrs.field(factory=list, init=False)
    _servers: list[uvicorn.Server] = attrs.field(factory=list, init=False)
    _loop: asyncio.AbstractEventLoop | None = attrs.field(default=None, init=False)
    _thread: threading.Thread | None = attrs.field(default=None, init=False)

    @property
    def addresses(self) -> list[str]:
        return [f"{self.host}:{port}" for port in self.ports]

    def start(self) -> EmulatorFleet:
        """Listen on `count` free ports; return once every node accepts connections."""
        if self._thread is not None:
            raise RuntimeError("emulator fleet already started")
        loop = asyncio.new_event_loop()
        started: asyncio.Future[None] = loop.create_future()
        self._loop = loop
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True,
                                        name=f"emulator-fleet-{self.count}")
        self._thread.start()
        asyncio.run_coroutine_threadsafe(_wrap(started), loop).result()
        return self

    def requests(self, path: str) -> int:
        """Requests for `path` all nodes have had (as the emulator's stats count them)."""
        return self._call(lambda: sum(_count(app.stats.as_dict()["requests"], path)
                                      for app in self.apps))

    def stop(self) -> None:
        """Close every listener and connection, then end the thread. Safe to call twice."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        self._loop = self._thread = None

    def __enter__(self) -> EmulatorFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, func: Any) -> Any:
        if self._loop is None:
            raise RuntimeError("emulator fleet not started")

        async def run() -> Any:
            return func()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(30)

    def _run(self, started: asyncio.Future[None]) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        quiet_injected_drops()
        task = loop.create_task(self._open())
        task.add_done_callback(lambda t: started.set_exception(t.exception())
                               if t.exception() else started.set_result(None))
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _open(self) -> None:
        models = [EmulatedModel(name) for name in self.models]
        for i in range(self.count):
            sock = socket.socket(socket.AF_INET)
            sock.bind((self.host, 0))
            port = sock.getsockname()[1]
            app = EmulatorApp(name=f"fleet-{i}", store=ModelStore.of(models, 3),
                              speed=Speed(self.tokens_per_second, 0.0, self.response_tokens,
                                          None, 4))
            config = uvicorn.Config(app, lifespan="off", log_config=None, log_level=None,
                                    access_log=False, backlog=1024)
            config.load()
            server = uvicorn.Server(config)
            server.lifespan = config.lifespan_class(config)
            await server.startup(sockets=[sock])
            self.apps.append(app)
            self.ports.append(port)
            self._servers.append(server)

    async def _close(self) -> None:
        for server in self._servers:
            for listener in server.servers:
                listener.close()
            for connection in list(server.server_state.connections):
                transport = getattr(connection, "transport", None)
                if transport is not None:
                    transport.abort()
        self._servers.clear()
        await asyncio.sleep(0)


async def _wrap(future: asyncio.Future[None]) -> None:
    await future


def _count(requests: dict[str, int], path: str) -> int:
    return sum(n for key, n in requests.items() if key.split(" ")[-1] == path)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve a fleet until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m sollol.testing.emulator_fleet",
                                     description="Many emulated Ollama nodes in one process.")
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--model", action="append", default=[], help="A model (repeatable).")
    parser.add_argument("--tokens-per-second", type=float, default=0.0, help="0: instantly.")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with EmulatorFleet(args.count, models=tuple(args.model or ["m"]),
                       tokens_per_second=args.tokens_per_second) as fleet:
        print(json.dumps({"addresses": fleet.addresses}), flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
