"""One llama-server `--rpc` process: its command line, its start-up, its log and why it died."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import httpx

from sollol.errors import NoRouteAvailable
from sollol.models import Backend, ResolvedModel

from . import layers, pipeline, procs, sockets
from .fill import FillRun
from .options import slug
from .plan import Plan
from .relay_set import RelaySet

log = logging.getLogger("sollol.sharding")
STARTING, READY, FAILED, STOPPED = "starting", "ready", "failed", "stopped"
LOG_MAX_BYTES = 16 * 1024 * 1024
"""A model's coordinator log is kept under this (and one previous part, `<model>.log.1`)."""
_LOADED = re.compile(r"llama_server: model loaded|main: model loaded")
_REASONS = (
    (re.compile(r"Failed to connect to (\S+)"), "could not connect to rpc-server {0}"),
    (re.compile(r"RPC handshake failed for (\S+)"), "could not connect to rpc-server {0}"),
    (re.compile(r"Remote RPC server crashed or returned malformed response"),
     "an rpc-server crashed or dropped the connection"),
    (re.compile(r"RPC server version mismatch: (\S+)"),
     "an rpc-server speaks RPC protocol {0}, which this llama-server does not"),
    (re.compile(r"(failed to load model.*|error loading model.*)"), "{0}"),
    (re.compile(r"(unable to allocate .*|failed to allocate .*)", re.IGNORECASE), "{0}"),
)


class CoordinatorFailed(Exception):
    """The coordinator exited or never became ready; the message says why, with its log's hint."""


@attrs.define
class Coordinator:
    """A llama-server that serves one model over a set of rpc-servers."""

    model: str
    resolved: ResolvedModel
    plan: Plan
    port: int
    log_path: Path
    generation: int
    proc: subprocess.Popen | None = None
    state: str = STARTING
    started_at: float = attrs.field(factory=time.time)
    ready_at: float | None = None
    last_used: float = attrs.field(factory=time.monotonic)
    in_flight: int = 0
    served: int = 0
    report: layers.LayerReport | None = None
    upload: dict[str, dict[str, int]] = attrs.field(factory=dict)
    fill: FillRun | None = None
    """The gateway's fill of its rpc-servers' caches before it started (`rpc_fill_caches`)."""
    """Bytes each rpc-server has received while the model loads (from the kernel's counters)."""
    error: str | None = None
    draining: str | None = None
    """Why it takes no new requests and stops once those in flight finish (e.g. a removed
    rpc-server), or None."""
    keep_alive: float | None = None
    """Seconds it stays loaded after its last request, as the last request that said asked
    (Ollama's `keep_alive`; 0: stop once idle), or None: `rpc_idle_timeout`."""
    down_at_start: frozenset[str] = frozenset()
    """rpc-servers that were down when it was placed: when one returns, an idle coordinator
    moves back to the placement it would have had (see Scheduler.rebalance_locked)."""
    log_offset: int = 0
    pipeline: str = ""
    """llama.cpp's pipeline parallelism: "on" or "off: why" (from its log, once it is up)."""
    slots: int = 0
    """Requests it runs at once (llama-server --parallel; `rpc_parallel`); 0: llama-server's
    own choice, and no limit here."""
    queued: int = 0
    """Requests waiting now for one of its slots."""
    refused: int = 0
    """Requests refused (429) because its slots and the queue were full."""
    links_armed: set[str] = attrs.field(factory=set)
    """Inodes of its sockets to rpc-servers whose dead-peer detection is on (see `links`)."""
    relays: RelaySet | None = None
    """Its write-behind relays (`rpc_load_relay`), or None: it connects to the rpc-servers."""
    on_cache_miss: Callable[[str], None] | None = None
    """Told the address of an rpc-server that lacked a tensor the gateway had filled."""
    ready: asyncio.Future[None] = attrs.field(factory=lambda: asyncio.get_running_loop()
                                              .create_future())

    @property
    def id(self) -> str:
        return f"llama-server:{self.model}@127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def backend(self) -> Backend:
        """The coordinator as a lease's backend (a new port per restart, so a new id)."""
        return Backend(id=self.id, kind="llama-server", address=f"127.0.0.1:{self.port}",
                       labels={"model": self.model, "rpc": ",".join(self.plan.addresses)})

    def argv(self, llama_server: Path, ctx_size: int, extra: list[str],
             verbose: bool = False, draft_max: int = 8) -> list[str]:
        args = [str(llama_server), "-m", str(self.resolved.path),
                "--rpc", ",".join(self.relays.addresses() if self.relays
                                  else self.plan.addresses),
                # 99: every layer on the rpc-servers (-ngl 0 would keep them all here)
                "-ngl", str(self.plan.gpu_layers),
                "--tensor-split", self.plan.tensor_split,
                "--host", "127.0.0.1", "--port", str(self.port),
                "--alias", self.model,
                "--metrics",  # its own throughput figures, read by the dashboard and status
                # buffer sizes per rpc-server are info (4); per-layer lines are debug (-v)
                "-v" if verbose else "-lv", *([] if verbose else ["4"])]
        # one context of ctx_size per slot, sequences batched together as they come
        if self.slots:
            args += ["--parallel", str(self.slots), "--cont-batching"]
        if ctx_size:
            args += ["-c", str(ctx_size * max(1, self.slots))]
        if self.plan.draft:  # on the gateway machine's CPU, never on the rpc-servers
            args += ["--model-draft", self.plan.draft, "--spec-type", "draft-simple",
                     "--device-draft", "none",
                     "--gpu-layers-draft", "0", "--spec-draft-n-max", str(draft_max)]
        return args + list(extra)

    def start(self, llama_server: Path, ctx_size: int, extra: list[str],
              verbose: bool = False, draft_max: int = 8) -> None:
        """Spawn the process (from the event loop's thread: see `procs.spawn`)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        procs.bound_log(self.log_path, LOG_MAX_BYTES)  # the runs before this one
        with self.log_path.open("a") as out:
            out.write(f"\n==== sollol: starting coordinator #{self.generation} for {self.model} "
                      f"on {', '.join(self.plan.addresses)} at {time.ctime()} ====\n")
        self.log_offset = self.log_path.stat().st_size
        self.proc = procs.spawn(self.argv(llama_server, ctx_size, extra, verbose, draft_max),
                                self.log_path)

    def launch(self, llama_server: Path, options: Any, pid_dir: Path) -> None:
        """Start it with the supervisor's options and record its pid file; NoRouteAvailable
        when the process cannot be started."""
        self.slots = options.parallel
        try:
            if options.load_relay:
                known = {a: s.hashes for a, s in self.fill.shards.items()} if self.fill else {}
                spool = options.state_dir / "spool"  # on disk: /tmp may be RAM (tmpfs)
                spool.mkdir(parents=True, exist_ok=True)
                self.relays = RelaySet.start(self.plan.addresses, self.id, options.link_timeout,
                                             known, self.on_cache_miss, spool)
            self.start(llama_server, options.ctx_size, list(options.extra_args),
                       options.verbose_log, options.draft_max)
        except OSError as exc:
            self.stop_relays()
            raise NoRouteAvailable(f"sharding: cannot start llama-server: {exc}") from None
        procs.write_pid_file(pid_dir, self.proc,
                             {"model": self.model, "backends": self.plan.addresses,
                              "port": self.port, "log": str(self.log_path)})
        log.info("starting coordinator for %s on %s (tensor split %s, pid %s)", self.model,
                 ", ".join(self.plan.addresses), self.plan.tensor_split, self.proc.pid)

    def save_report(self, folder: Path) -> None:
        """Keep the layer report on disk too, so `sollol shard status` works without a gateway."""
        with contextlib.suppress(OSError):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{slug(self.model)}.json").write_text(
                json.dumps(self.as_dict(), indent=2, default=str))

    def bound_log(self) -> None:
        """Keep this run's log under LOG_MAX_BYTES (llama-server logs every request)."""
        if procs.bound_log(self.log_path, LOG_MAX_BYTES):
            self.log_offset = 0

    def stop_relays(self) -> None:
        """Stop its relays, if any (after the process: it sees its links reset otherwise)."""
        if self.relays is not None:
            self.relays.stop()

    async def lost_links(self) -> list[str]:
        """rpc-servers it is no longer connected to (no traffic: /proc, or its relays)."""
        if self.relays is not None:
            return self.relays.lost()
        if self.proc is None:
            return []
        peers = await asyncio.to_thread(sockets.established_peers, self.proc.pid)
        return [a for a in self.plan.addresses
                if peers is not None and not (sockets.resolve(a) & peers)]

    async def track_upload(self) -> None:
        """While it loads: bytes each rpc-server has received (the kernel's or relays' counts)."""
        if self.relays is not None:
            self.note_upload({(a, 0): n for a, n in self.relays.delivered().items()},
                             lambda a: {(a, 0)})
        elif self.proc is not None and self.alive():
            self.note_upload(await asyncio.to_thread(sockets.bytes_delivered, self.proc.pid),
                             sockets.resolve)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        """This run's part of the log file."""
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(self.log_offset)
                text = handle.read().decode(errors="replace")
        except OSError:
            return ""
        return self.relays.unrelay(text) if self.relays else text

    def log_tail(self, lines: int = 12, limit: int = 8192) -> list[str]:
        """The last lines of this run's log (reads at most `limit` bytes from its end)."""
        try:
            with self.log_path.open("rb") as handle:
                size = handle.seek(0, 2)
                start = max(self.log_offset, size - limit)
                handle.seek(start)
                text = handle.read().decode(errors="replace")
        except OSError:
            return []
        if self.relays:
            text = self.relays.unrelay(text)
        kept = text.splitlines()[1:] if start > self.log_offset else text.splitlines()
        return [line[:300] for line in kept if line.strip()][-lines:]

    def note_upload(self, delivered: dict[tuple[str, int], int] | None,
                    resolve: Callable[[str], set[tuple[str, int]]]) -> None:
        """Record how many bytes each rpc-server has received so far (while the model loads)."""
        if delivered is None:
            return
        shares = [float(s) for s in self.plan.tensor_split.split(",")]
        size, start = self.resolved.size, 0
        upload = {}
        for backend in self.plan.backends:
            share = sum(shares[start:start + len(backend.free)])
            start += len(backend.free)
            sent = sum(delivered.get(peer, 0) for peer in resolve(backend.address))
            upload[backend.address] = {"bytes": sent, "expected_bytes": int(size * share)}
        self.upload = upload

    def progress(self) -> str:
        """The last meaningful log line, to show while a model loads."""
        for line in reversed(self.log_text().splitlines()[-40:]):
            text = line.strip()
            if text and set(text) != {"."}:
                return text[:200]
        return ""

    def exit_reason(self) -> str:
        """Why the process ended, from its exit status and the telling lines of its log."""
        code = self.proc.returncode if self.proc else None
        status = f"exit status {code}"
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                status = f"killed by {signal.Signals(-code).name}"
        elif code == 134:
            status = "aborted (exit 134, SIGABRT)"
        text = self.log_text()
        for pattern, template in _REASONS:
            if m := pattern.search(text):
                return f"llama-server {status}: {template.format(*m.groups())}"
        tail = " | ".join(line.strip() for line in text.splitlines()[-3:] if line.strip())
        return f"llama-server {status}" + (f"; log ends: {tail[-300:]}" if tail else "")

    async def wait_ready(self, timeout: float) -> None:
        """Poll `/health` until 200; parse the layer report. Raise CoordinatorFailed otherwise."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:  # not via $http_proxy
            while time.monotonic() < deadline:
                if not self.alive():
                    raise CoordinatorFailed(self.exit_reason())
                try:
                    response = await client.get(self.base_url + "/health")
                    if response.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass  # not listening yet
                await asyncio.sleep(0.1)
            else:
                msg = (f"llama-server did not become ready within {timeout:g}s "
                       f"(last log line: {self.progress()!r})")
                raise CoordinatorFailed(msg)
        # llama-server writes its log from a separate thread, which lags on a busy machine: wait
        # for the line it logs after loading, so the report sees every buffer line.
        for _ in range(100):
            if _LOADED.search(self.log_text()):
                break
            await asyncio.sleep(0.05)
        text = self.log_text()
        self.report = layers.parse(text.splitlines(), self.plan.addresses)
        self.pipeline = pipeline.from_log(text, self.plan.pipeline_off)
        self.ready_at = time.time()

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "id": self.id, "state": self.state, "generation": self.generation,
            "pid": self.proc.pid if self.proc else None, "url": self.base_url,
            "gguf": str(self.resolved.path), "backends": self.plan.addresses,
            "tensor_split": self.plan.tensor_split,
            "upload": self.upload,
            "cache_fill": self.fill.as_dict() if self.fill else None,
            "placement": {"reason": self.plan.reason, "numbers": self.plan.numbers,
                          "devices": {b.address: len(b.free) for b in self.plan.backends},
                          "draft": self.plan.draft or None},
            "pipeline": self.pipeline or None,
            "pipeline_expected": ("off: " + self.plan.pipeline_off) if self.plan.pipeline_off
            else pipeline.ON,
            "in_flight": self.in_flight,
            "slots": {"total": self.slots or None,
                      "busy": min(self.in_flight, self.slots or self.in_flight),
                      "queued": self.queued, "refused": self.refused},
            "served": self.served, "started_at": self.started_at,
            "load_seconds": round(self.ready_at - self.started_at, 2) if self.ready_at else None,
            "idle_seconds": round(time.monotonic() - self.last_used, 1),
            "keep_alive": self.keep_alive,
            "progress": self.progress() if self.state == STARTING else None,
            "links_watched": self.relays.armed() if self.relays else len(self.links_armed),
            "relay": self.relays.as_dict() if self.relays else None,
            "error": self.error, "draining": self.draining, "log": str(self.log_path),
            "layers": self.report.as_dict() if self.report else None,
        }
