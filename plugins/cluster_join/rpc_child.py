"""The worker's rpc-server: `sollol rpc serve --host 127.0.0.1` as a supervised child.

`sollol rpc serve` picks the best build and devices and drops silent clients; it runs with
`server_child` (`die_with_parent`, SIGPIPE ignored), so it (and its ggml-rpc-server) end with
the agent even if the agent is killed. An unexpected exit is restarted after a pause that grows
to `MAX_PAUSE`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import attrs

from sollol.core.processes import server_child

MAX_PAUSE = 30.0
STOP_GRACE = 10.0
STARTUP = 180.0
"""Seconds the first start may take (finding binaries and listing devices included)."""


class ChildFailed(Exception):
    """The rpc-server did not start; the message says why."""


def serve_argv(port: int, devices: str | None, threads: int | None,
               config_file: Path | None) -> list[str]:
    argv = [sys.executable, "-m", "sollol", "rpc", "serve", "--host", "127.0.0.1",
            "--port", str(port)]
    if devices:
        argv += ["--devices", devices]
    if threads:
        argv += ["--threads", str(threads)]
    if config_file is not None:
        argv += ["--config", str(config_file)]
    return argv


@attrs.define
class RpcChild:
    argv: Sequence[str]
    env: Mapping[str, str]
    port: int
    say: Callable[[str], None]
    stopping: asyncio.Event
    _proc: asyncio.subprocess.Process | None = None
    _task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        """Start it and wait until it accepts connections; ChildFailed if it exits first."""
        await self._spawn()
        self._task = asyncio.get_running_loop().create_task(self._supervise())

    async def _spawn(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            *self.argv, env=dict(self.env), stdin=asyncio.subprocess.DEVNULL,
            preexec_fn=server_child)
        deadline = time.monotonic() + STARTUP
        while True:
            if self._proc.returncode is not None:
                raise ChildFailed(f"`{' '.join(self.argv[1:4])} ...` exited with status "
                                  f"{self._proc.returncode} (its messages are above)")
            try:
                _reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if time.monotonic() > deadline:
                    raise ChildFailed(f"the rpc-server did not listen on 127.0.0.1:{self.port} "
                                      f"within {STARTUP:.0f} s") from None
                await asyncio.sleep(0.1)  # a port has no event to wait on
                continue
            writer.close()  # nothing sent: the rpc-server just sees it close
            return

    async def _supervise(self) -> None:
        pause = 1.0
        while True:
            assert self._proc is not None
            started = time.monotonic()
            code = await self._proc.wait()
            if self.stopping.is_set():
                return
            if time.monotonic() - started > 60:
                pause = 1.0
            self.say(f"the rpc-server exited (status {code}); restarting it in {pause:.0f} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), pause)
                return
            pause = min(MAX_PAUSE, pause * 2)
            try:
                await self._spawn()
            except ChildFailed as exc:
                self.say(str(exc))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), STOP_GRACE)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
