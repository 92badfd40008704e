"""Health probes for pool nodes: Ollama's API, or an OpenAI-compatible server's.

Ollama: `/api/tags` (models on disk), `/api/ps` (loaded models, VRAM), and `/api/version` on a
first look (it tells Ollama from other servers, and its version changes only with a restart).
OpenAI-compatible: `/health` (llama-server and vLLM; 503 while loading), `/v1/models`, and
llama-server's `/slots` (its parallel slots) when it is enabled.

A probe costs its few GETs and nothing more: a `Prober` keeps one session whose connections are
reused probe after probe, and takes a first look (Ollama's version; what a node can do:
`/api/show`, `/props`, an empty `/v1/embeddings`) once per model load: when the node is new,
came back from being down, or its models changed (Ollama: names and digests; OpenAI-compatible:
ids and what `/v1/models` says of each, so a restart with another context size counts). What a
node said it does not serve (`/slots` disabled, answered 404/501) is not asked again for that
load. After the first probe, a healthy node with the same models is asked only the cheap
liveness and state requests: Ollama `/api/tags` and `/api/ps`; OpenAI-compatible `/health`,
`/v1/models` and, where served, `/slots`. A lesson that fails (a busy node answering past the
probe's timeout) is tried again at the next probe, then after `RETRY_FIRST` seconds, doubling up
to `RETRY_MAX`: not on every probe. Probes are coroutines on the event loop: a hung node
holds its own probe, never another's. A probe never raises for network trouble: it reports it.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import socket
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import aiohttp
import attrs

from sollol.models import Backend, HealthReport, join_host_port

from . import node_capabilities
from .node_discovery import OLLAMA, OPENAI, base_url
from .node_http import NodeClient, new_session

RETRY_FIRST = 5.0
RETRY_MAX = 300.0
"""Seconds before a lesson that failed twice running is tried again: the first pause, doubling
with each failure, and the longest."""
NOT_SERVED = frozenset({404, 405, 501})
"""Statuses by which a node says it does not serve a path (llama-server: 501 for a disabled
endpoint)."""


@attrs.frozen
class Lesson:
    """What a good probe saw of a node's models, and how to ask what it can do with them."""

    models: tuple[Any, ...]
    learn: Callable[[], Awaitable[dict[str, Any]]]
    version: str = ""
    unserved: frozenset[str] = frozenset()
    """Paths the node answered this probe it does not serve."""


class _NotThisApi(Exception):
    """The server answered, but not in this dialect (e.g. 404 on /api/version)."""


@attrs.frozen
class Learned:
    """What a node can do, and the model list it was learned for."""

    models: tuple[Any, ...]
    extra: dict[str, Any]
    """The report fields it gives: `capabilities`, `server`, `details`, `unserved`."""
    version: str = ""
    """Ollama's version (it changes only with a restart, which a probe sees as the node down)."""

    @property
    def unserved(self) -> frozenset[str]:
        """Paths the node said it does not serve (not asked again for these models)."""
        return frozenset(self.extra.get("unserved") or ())


@attrs.define(eq=False)
class Prober:
    """Probes nodes over one shared session; owned by a pool route, closed when it stops.

    Bounded: one `Learned` and one detected dialect per node probed, dropped by `retain` when
    the node leaves the pool, and one idle connection per node.
    """

    interval: float = 5.0
    """The probe interval (idle connections are kept past the next probe)."""
    family_of: node_capabilities.FamilyOf | None = None
    """A model name's architecture from the operator's own GGUF files (never a node's path)."""
    _session: aiohttp.ClientSession | None = None
    _learned: dict[str, Learned] = attrs.field(factory=dict)
    _dialect: dict[str, str] = attrs.field(factory=dict)
    """For nodes whose dialect is detected: the one that answered last (tried first)."""
    _failed: dict[str, tuple[tuple[Any, ...], float, int]] = attrs.field(factory=dict)
    """Nodes whose last lesson failed: (its models, when to try again, failures running)."""

    async def check(self, backend: Backend, timeout: float) -> HealthReport:
        """Probe one node in its dialect (trying both when its address asked for detection),
        within `timeout` seconds in all."""
        order = [OLLAMA, OPENAI] if backend.kind == OLLAMA else [OPENAI]
        if backend.labels.get("detect") != "1":
            order = order[:1]
        elif self._dialect.get(backend.id) == OPENAI:
            order.reverse()
        report = await self._check(backend, order, timeout)
        if not report.healthy:
            self._learned.pop(backend.id, None)  # back later, it may have other options
            self._failed.pop(backend.id, None)
        return report

    async def _client(self, backend: Backend) -> NodeClient:
        """The node through the shared session. A node named by a host name has the name looked
        up on every probe: a kept-alive connection would hide a name that stopped resolving or
        moved. Plain HTTP then goes to the address the name gives now (the name in `Host`)."""
        if self._session is None:
            self._session = new_session(self.interval)
        headers = {"Accept": "application/json", **backend.auth_headers()}
        host, port = backend.host, backend.port
        if _is_ip(host):
            return NodeClient(self._session, base_url(backend), headers)
        try:
            found = await asyncio.get_running_loop().getaddrinfo(host, port,
                                                                 type=socket.SOCK_STREAM)
        except OSError as exc:
            msg = f"cannot resolve {host}: {exc.strerror or exc}"
            raise aiohttp.ClientConnectionError(msg) from None
        root = base_url(backend)
        if backend.labels.get("scheme", "http") == "http" and found:
            now_at = join_host_port(str(found[0][4][0]), port)
            root = root.replace(f"://{backend.address}", f"://{now_at}", 1)
            headers["Host"] = backend.address
        return NodeClient(self._session, root, headers)

    async def _check(self, backend: Backend, order: list[str], timeout: float) -> HealthReport:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                client = await self._client(backend)
                for api in order:
                    try:
                        probe = _ollama if api == OLLAMA else _openai
                        report, lesson = await probe(client, backend, started, self)
                    except _NotThisApi as exc:
                        last = str(exc)
                        continue
                    if len(order) > 1:
                        self._dialect[backend.id] = api
                    break
                else:
                    return HealthReport(backend.id, healthy=False,
                                        detail=f"not a known API: {last}")
        except TimeoutError:
            return HealthReport(backend.id, healthy=False,
                                detail=f"probe timed out after {timeout}s")
        except aiohttp.ClientError as exc:
            return HealthReport(backend.id, healthy=False, detail=_describe(exc))
        except ValueError as exc:  # a body that is not the JSON the API documents
            return HealthReport(backend.id, healthy=False, detail=f"bad reply: {exc}")
        if lesson is None:
            return report
        # outside the probe's time: a slow /api/show makes no node look down
        learned = await self._learn(backend.id, lesson, timeout)
        return attrs.evolve(report, extra={**report.extra, **learned}) if learned else report

    def recall(self, node: str) -> Learned | None:
        """What was learned of `node` since it was last seen down."""
        return self._learned.get(node)

    async def _learn(self, node: str, lesson: Lesson, timeout: float) -> dict[str, Any]:
        """What `node` can do: remembered while its models stay the same, else asked. A failed
        look is not a sick node: nothing is reported; the next probe asks again, later ones
        only after a pause that doubles while it keeps failing."""
        known = self.recall(node)
        if known is not None and known.models == lesson.models:
            if lesson.unserved - known.unserved:  # a path it stopped serving, said just now
                known = attrs.evolve(known, extra={
                    **known.extra, "unserved": sorted(known.unserved | lesson.unserved)})
                self._learned[node] = known
            return known.extra
        failed = self._failed.get(node)
        now = time.monotonic()
        if failed is not None and failed[0] == lesson.models and now < failed[1]:
            return {}  # it failed just now: not asked again on every probe
        try:
            async with asyncio.timeout(timeout):
                extra = await lesson.learn()
        except (TimeoutError, aiohttp.ClientError, ValueError):
            count = failed[2] + 1 if failed and failed[0] == lesson.models else 1
            pause = 0.0 if count == 1 else min(RETRY_FIRST * 2 ** (count - 2), RETRY_MAX)
            self._failed[node] = (lesson.models, time.monotonic() + pause, count)
            return {}
        self._failed.pop(node, None)
        unserved = frozenset(extra.get("unserved") or ()) | lesson.unserved
        extra = {**extra, "unserved": sorted(unserved)}
        self._learned[node] = Learned(lesson.models, extra, lesson.version)
        return extra

    def retain(self, nodes: Collection[str]) -> None:
        """Forget nodes not in `nodes` (a container of node ids)."""
        for table in (self._learned, self._dialect, self._failed):
            if len(table) > len(nodes):
                for gone in [n for n in table if n not in nodes]:
                    del table[gone]

    def sizes(self) -> dict[str, int]:
        """Entries per table (what the soak test checks for growth)."""
        return {"learned": len(self._learned), "dialect": len(self._dialect),
                "failed": len(self._failed)}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def check(backend: Backend, timeout: float) -> HealthReport:
    """One probe from a thread that runs no event loop (the `sollol_check_health` hook)."""
    async def once() -> HealthReport:
        prober = Prober()
        try:
            return await prober.check(backend, timeout)
        finally:
            await prober.close()

    return asyncio.run(once())


@functools.lru_cache(maxsize=4096)
def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _describe(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"connection failed: {exc.os_error.strerror or exc}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection failed: the node closed the connection"
    if isinstance(exc, aiohttp.ClientConnectionError):
        return f"connection failed: {exc}"
    return f"{type(exc).__name__}: {exc}"


async def _ollama(client: NodeClient, backend: Backend, started: float,
                  prober: Prober) -> tuple[HealthReport, Lesson | None]:
    known = prober.recall(backend.id)
    if known is None:  # a first look (or a fresh one): is it Ollama, which version
        reply = await client.get("/api/version")
        latency = time.perf_counter() - started
        if reply.status == 404:
            raise _NotThisApi("GET /api/version: HTTP 404")
        if reply.status != 200:
            return HealthReport(backend.id, healthy=False, latency_s=latency,
                                detail=f"GET /api/version: HTTP {reply.status}"), None
        version = str(reply.json().get("version", ""))
    else:  # known alive and Ollama: its model lists say whether it still is
        version = known.version
    tags = await client.get("/api/tags")
    if known is not None:
        latency = time.perf_counter() - started
    ps = await client.get("/api/ps")
    for path, reply in (("/api/tags", tags), ("/api/ps", ps)):
        if reply.status != 200:
            return HealthReport(backend.id, healthy=False, latency_s=latency,
                                detail=f"GET {path}: HTTP {reply.status}"), None
    tag_entries = _entries(tags.json())
    ps_entries = _entries(ps.json())
    vram = sum(int(e.get("size_vram") or 0) for e in ps_entries)
    extra: dict[str, Any] = {"api": OLLAMA, "tags": tag_entries, "ps": ps_entries,
                             "vram_used": vram, "server": "ollama"}
    models = tuple((_name(e), str(e.get("digest") or "")) for e in tag_entries)

    async def learn() -> dict[str, Any]:
        found = await node_capabilities.ollama_models(client, backend.id, tag_entries)
        return {"capabilities": found}

    return HealthReport(
        backend.id, healthy=True, latency_s=latency, detail="ok", version=version,
        models=tuple(_name(e) for e in tag_entries),
        loaded_models=tuple(_name(e) for e in ps_entries),
        extra=extra,
    ), Lesson(models, learn, version)


async def _openai(client: NodeClient, backend: Backend, started: float,
                  prober: Prober) -> tuple[HealthReport, Lesson | None]:
    health = await client.get("/health")
    latency = time.perf_counter() - started
    if health.status == 503:
        return HealthReport(backend.id, healthy=False, latency_s=latency,
                            detail="GET /health: 503 (loading the model)"), None
    if health.status not in (200, 404):
        return HealthReport(backend.id, healthy=False, latency_s=latency,
                            detail=f"GET /health: HTTP {health.status}"), None
    models = await client.get("/v1/models")
    if models.status == 404:
        raise _NotThisApi("GET /v1/models: HTTP 404")
    if models.status != 200:
        return HealthReport(backend.id, healthy=False, latency_s=latency,
                            detail=f"GET /v1/models: HTTP {models.status}"), None
    data = models.json().get("data")
    if not isinstance(data, list):
        raise ValueError("/v1/models has no data list")
    ids = tuple(str(m["id"]) for m in data if isinstance(m, dict) and "id" in m)
    meta = {str(m["id"]): m.get("meta") or {} for m in data if isinstance(m, dict) and "id" in m}
    extra: dict[str, Any] = {"api": OPENAI, "meta": meta}
    # the model load: its ids and what the server says of each (a restart with other settings
    # that shows no downtime between two probes still changes `n_ctx` and the like)
    load = tuple((name, json.dumps(meta[name], sort_keys=True, default=str)) for name in ids)
    known = prober.recall(backend.id)
    unserved: set[str] = set()
    if known is None or known.models != load or "/slots" not in known.unserved:
        slots = await client.get("/slots")
        if slots.status in NOT_SERVED:
            unserved.add("/slots")
        listed = slots.json() if slots.status == 200 else None
        if isinstance(listed, list):
            busy = [s for s in listed if isinstance(s, dict) and s.get("is_processing")]
            extra.update(slots=len(listed), slots_busy=len(busy))

    async def learn() -> dict[str, Any]:
        said = await node_capabilities.openai_server(client, prober.family_of)
        learned: dict[str, Any] = {"server": said.server, "details": said.details,
                                   "unserved": sorted(said.unserved)}
        if said.capabilities is not None:
            learned["capabilities"] = {"": said.capabilities}
        return learned

    return HealthReport(backend.id, healthy=True, latency_s=latency, detail="ok",
                        models=ids, loaded_models=ids, extra=extra), \
        Lesson(load, learn, unserved=frozenset(unserved))


def _entries(body: Any) -> list[dict[str, Any]]:
    models = body.get("models") if isinstance(body, dict) else None
    if not isinstance(models, list):
        raise ValueError("expected {\"models\": [...]}")
    return [m for m in models if isinstance(m, dict) and _name(m)]


def _name(entry: dict[str, Any]) -> str:
    return str(entry.get("name") or entry.get("model") or "")
