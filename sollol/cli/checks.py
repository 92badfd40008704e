"""`sollol doctor`'s checks: what a homelab set-up gets wrong, each finding with a fix.

Plugins are reached only through hooks: backends come from `sollol_discover_backends`, their
health and versions from `sollol_check_health`, store names from `sollol_gguf_names`.
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import attrs
import httpx

from sollol.cli.credentials import describe
from sollol.cli.gateway_client import gateway_address, gateway_client, read_json
from sollol.config import Config
from sollol.core.access import open_bind
from sollol.core.plugin_manager import collect_named
from sollol.core.runtime import ClusterRuntime, load
from sollol.errors import BinaryNotFound, ConfigError, PluginError, SollolError
from sollol.llamacpp import INSTALL_COMMAND, Binaries, find_binaries, for_serving, toolchain
from sollol.llamacpp.devices import Device, rpc_server_devices
from sollol.models import Backend, HealthReport

Status = Literal["ok", "warn", "fail"]
RPC_API = "ggml-rpc"
"""The `api` of the backend kind that rpc-servers are registered under."""


@attrs.frozen
class Finding:
    """One checked thing: how it stands, what was seen, and how to fix it."""

    check: str
    subject: str
    status: Status
    detail: str
    fix: str = ""


def run_checks(config_file: Path | None = None, timeout: float = 3.0) -> list[Finding]:
    """Every check, in the order a person would fix things."""
    findings: list[Finding] = []
    try:
        config, pm = load(path=config_file)
    except (ConfigError, PluginError) as exc:
        where = exc.source if isinstance(exc, ConfigError) and exc.source else "the config"
        findings.append(Finding("config", "configuration", "fail", str(exc),
                                f"correct it in {where} (`sollol config show` lists every key)"))
        findings += _binaries(None)
        return findings
    cluster = ClusterRuntime(config=config, pm=pm)
    findings.append(_config(cluster))
    findings += (binaries := _binaries(cluster))
    if all(f.status == "ok" for f in binaries):
        findings.append(_gpu(cluster.config))
    local_rpc = _local_rpc_version(cluster, timeout) if binaries[0].status == "ok" else None
    running = RunningGateway.ask(gateway_address(config))
    findings += _backends(cluster, timeout, local_rpc, running)
    findings.append(_store(cluster))
    findings.append(_gateway_port(config["gateway_host"], config["gateway_port"], running))
    findings.append(_gateway_access(config["gateway_host"], config["api_keys"]))
    return findings


@attrs.frozen
class RunningGateway:
    """What the SOLLOL gateway at the config's address (if one runs) says about itself.

    Doctor runs beside a live cluster: the gateway's own port is taken by it, and the
    rpc-servers its coordinators hold are busy by design. Only the gateway can say which.
    """

    url: str
    status: int | None = None
    """HTTP status of GET /sollol/routes/sharding; None when no SOLLOL gateway answers."""
    held: dict[str, str] = attrs.field(factory=dict)
    """rpc-server address -> which coordinator holds it (when the gateway said)."""

    @property
    def running(self) -> bool:
        return self.status is not None

    @property
    def refused(self) -> bool:
        """A gateway runs but would not show its sharding state to the key we sent."""
        return self.status in (401, 403)

    @classmethod
    def ask(cls, url: str) -> RunningGateway:
        try:
            with gateway_client(url, timeout=2.0) as client:
                reply = client.get("/sollol/routes/sharding")
        except httpx.HTTPError:
            return cls(url)
        # a refusal from SOLLOL's guard names its realm; anything else is not ours
        ours = 'realm="sollol"' in reply.headers.get("www-authenticate", "")
        if reply.status_code in (401, 403):
            return cls(url, reply.status_code) if ours or reply.status_code == 403 else cls(url)
        try:
            data = read_json(reply)
        except ValueError:
            return cls(url)
        if reply.status_code == 404 and isinstance(data, dict) and "error" in data:
            return cls(url, 404)  # a gateway without the sharding plugin
        backends = data.get("backends") if isinstance(data, dict) else None
        if reply.status_code != 200 or not isinstance(backends, list):
            return cls(url)
        held = {str(b["address"]): f"held by coordinator {b['attached_to']} of the gateway at "
                f"{url}" for b in backends
                if isinstance(b, dict) and b.get("attached_to") and b.get("address")}
        return cls(url, 200, held)


def _gateway_access(host: str, api_keys: list[dict[str, object]]) -> Finding:
    """A gateway bound beyond loopback must require keys (`sollol run` refuses otherwise)."""
    subject = f"gateway access on {host}"
    problem = open_bind(host, api_keys)
    if problem:
        return Finding("gateway", subject, "fail", f"open wide bind: {problem}",
                       "sollol keys create NAME --admin (or bind 127.0.0.1: "
                       "sollol config set gateway_host 127.0.0.1)")
    if api_keys:
        return Finding("gateway", subject, "ok", f"{len(api_keys)} access key(s) required")
    return Finding("gateway", subject, "ok", "loopback only, no keys needed")


def _config(cluster: ClusterRuntime) -> Finding:
    config = cluster.config
    try:
        cluster.kinds = {n: k for n, (k, _) in collect_named(
            cluster.pm, "sollol_register_backend_kinds", "backend kind").items()}
        policy = cluster._make_policy()  # builds the policy from policy_settings: may raise
    except (ConfigError, PluginError) as exc:
        return Finding("config", "configuration", "fail", str(exc),
                       f"correct it in {config.path} (`sollol config show` lists every key)")
    changed = sorted(k for k, s in config.sources.items() if s != "default")
    modes = [name for name, key in (("sharding", "model_sharding_enabled"),
                                    ("distribution", "task_distribution_enabled")) if config[key]]
    exists = config.path is not None and config.path.is_file()
    where = f"{config.path} is valid" if exists else f"no config file at {config.path}"
    detail = (f"{where}; set: {', '.join(changed) or 'nothing (all defaults)'}; "
              f"modes: {' + '.join(modes) or 'none'}")
    if policy is not None and len(modes) == 2:
        detail += f"; policy {policy.name}"
    if not modes:
        return Finding("config", "configuration", "fail", detail + ": nothing can serve requests",
                       "sollol config set task_distribution_enabled true")
    if not exists:
        return Finding("config", "configuration", "warn",
                       detail + " (defaults and the environment only)",
                       "write it: sollol config set ollama_nodes HOST:11434,... (`sollol config "
                       "path` shows where it goes)")
    return Finding("config", "configuration", "ok", detail)


def _binaries(cluster: ClusterRuntime | None) -> list[Finding]:
    try:
        found = find_binaries(cluster.config if cluster else None)
    except BinaryNotFound as exc:
        return [Finding("binaries", "llama.cpp", "fail", str(exc),
                        f"run `{INSTALL_COMMAND}` (builds them once, ~6-7 min on 2 cores)")]
    out = []
    for path, args in ((found.llama_server, ["--version"]), (found.rpc_server, ["--help"])):
        try:
            result = subprocess.run([str(path), *args], capture_output=True, text=True,
                                    errors="replace", timeout=30, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            out.append(Finding("binaries", path.name, "fail", f"{path} does not run: {exc}",
                               f"rebuild: `{INSTALL_COMMAND} --force`"))
            continue
        text = (result.stdout + result.stderr).strip()
        if result.returncode != 0:
            out.append(Finding("binaries", path.name, "fail",
                               f"{path} exited with {result.returncode}: {text[-300:]}",
                               f"rebuild: `{INSTALL_COMMAND} --force`"))
            continue
        version = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                        if line.startswith("version:")), "runs")
        out.append(Finding("binaries", path.name, "ok", f"{path} ({found.source}): {version}"))
    return out


def _gpu(config: Config) -> Finding:
    """Does the rpc-server that `sollol rpc serve` runs use the GPU this machine shows?"""
    found = for_serving(find_binaries(config))
    try:
        devices = rpc_server_devices(found.rpc_server)
    except SollolError as exc:
        return Finding("gpu", "GPU devices", "fail", str(exc), f"rebuild: `{INSTALL_COMMAND}`")
    return gpu_finding(found.backend, devices, toolchain.choose())


def gpu_finding(backend: str, devices: tuple[Device, ...], choice: toolchain.Choice) -> Finding:
    """The GPU finding from the rpc-server's backend and devices and what the machine shows."""
    gpus = [d for d in devices if d.is_gpu]
    if gpus:
        return Finding("gpu", "GPU devices", "ok", f"rpc-server ({backend} build) serves "
                       + "; ".join(d.line() for d in gpus))
    visible = [f for f in choice.findings if f.gpu]
    if not visible:
        return Finding("gpu", "GPU devices", "ok",
                       f"no GPU visible; the rpc-server ({backend} build) serves the CPU")
    gpu = visible[0]
    fix = f"{INSTALL_COMMAND} --backend {gpu.backend}"
    if not gpu.toolkit:
        fix = f"{gpu.missing}; then {fix}"
    return Finding("gpu", "GPU devices", "fail",
                   f"this machine shows a {gpu.backend} GPU ({gpu.gpu}) but the rpc-server "
                   f"({backend} build) sees no GPU device: sharded models run on the CPU", fix)


def _local_rpc_version(cluster: ClusterRuntime, timeout: float) -> str | None:
    """The RPC protocol our llama-server speaks: ask its sibling rpc-server (same build)."""
    from sollol.core.processes import ProcessGroup, free_port, wait_port

    kind = _rpc_kind(cluster)
    if kind is None:
        return None
    binaries: Binaries = find_binaries(cluster.config)
    with tempfile.TemporaryDirectory(prefix="sollol-doctor-") as tmp, \
            ProcessGroup(log_dir=Path(tmp)) as group:
        port = free_port()
        proc = group.start("rpc-server", [binaries.rpc_server, "-H", "127.0.0.1", "-p",
                                          str(port), "-t", "1"])
        try:
            wait_port("127.0.0.1", port, process=proc, timeout=30)
        except (RuntimeError, TimeoutError):
            return None
        backend = Backend(id=f"local:{port}", kind=kind, address=f"127.0.0.1:{port}")
        report = cluster.pm.hook.sollol_check_health(backend=backend, timeout=timeout)
    return report.version if report is not None and report.healthy else None


def _rpc_kind(cluster: ClusterRuntime) -> str | None:
    return next((k.name for k in cluster.kinds.values() if k.api == RPC_API), None)


def _backends(cluster: ClusterRuntime, timeout: float, local_rpc: str | None,
              running: RunningGateway) -> list[Finding]:
    config = cluster.config
    try:
        backends = cluster.discover()
    except PluginError as exc:
        return [Finding("backends", "discovery", "fail", str(exc), "report this plugin bug")]
    rpc_kind = _rpc_kind(cluster)
    pool = [b for b in backends if b.kind != rpc_kind]
    rpc = [b for b in backends if b.kind == rpc_kind]
    # an rpc-server a running gateway's coordinator holds serves only that coordinator: it is
    # busy by design, and a probe would only wait on it (or reach it). A gateway that will not
    # say which it holds gets none of its rpc-servers probed.
    held = running.held
    unasked = running.refused
    probed = [b for b in backends
              if not (b.kind == rpc_kind and (unasked or b.address in held))]
    with ThreadPoolExecutor(max_workers=8) as workers:
        reports = list(workers.map(
            lambda b: cluster.pm.hook.sollol_check_health(backend=b, timeout=timeout), probed))
    by_id = dict(zip([b.id for b in probed], reports, strict=True))
    out = [_pool_node(b, by_id[b.id], config.sources.get("ollama_nodes", "config"))
           for b in pool if config["task_distribution_enabled"]]
    if config["task_distribution_enabled"] and not pool:
        out.append(Finding("pool", "pool nodes", "fail", "no pool nodes are configured",
                           "sollol config set ollama_nodes 10.0.0.5:11434,10.0.0.6:11434"))
    out += [Finding("sharding", f"rpc-server {b.address}", "ok",
                    f"busy by design: {held[b.address]}") if b.address in held
            else _not_probed(b, running) if unasked
            else _rpc_server(b, by_id[b.id], local_rpc) for b in rpc]
    if config["model_sharding_enabled"] and not rpc:
        out.append(Finding("sharding", "rpc-servers", "fail", "no rpc-servers configured or "
                           "answering on loopback",
                           "sollol config set rpc_backends 10.0.0.7:50052,10.0.0.8:50052 (start "
                           "each with `sollol rpc serve --host 0.0.0.0 --port 50052`)"))
    return out


def _not_probed(backend: Backend, running: RunningGateway) -> Finding:
    return Finding("sharding", f"rpc-server {backend.address}", "warn",
                   f"not probed: the gateway at {running.url} may hold it (a probe would reach "
                   f"a busy rpc-server) and did not say, HTTP {running.status}",
                   f"let doctor ask it: {describe(running.status or 401)}")


def _pool_node(backend: Backend, report: HealthReport | None, source: str) -> Finding:
    subject = f"pool node {backend.address}"
    if report is None:
        return Finding("pool", subject, "fail", f"no plugin can check kind {backend.kind!r}",
                       "enable the plugin that provides it (`sollol plugins`)")
    if not report.healthy:
        how = ("start Ollama there (`ollama serve`, with OLLAMA_HOST=0.0.0.0 for other "
               "machines) or llama-server with --host 0.0.0.0")
        if backend.labels.get("source") == "default":
            fix = f"{how}, or list your nodes: sollol config set ollama_nodes HOST:11434,..."
        else:
            fix = f"{how}; or remove it from ollama_nodes (set in {source})"
        return Finding("pool", subject, "fail", f"unreachable: {report.detail}", fix)
    api = report.extra.get("api", backend.kind)
    version = report.version or _build_info(backend, api) or "version not reported"
    models = ", ".join(report.models[:5]) or "no models"
    if len(report.models) > 5:
        models += f" (+{len(report.models) - 5} more)"
    return Finding("pool", subject, "ok", f"{api} {version}; models: {models}")


def _build_info(backend: Backend, api: str) -> str | None:
    """llama-server's build (its `/props`); other OpenAI-compatible servers may not say."""
    if api != "openai":
        return None
    scheme, path = backend.labels.get("scheme", "http"), backend.labels.get("path", "")
    try:
        reply = httpx.get(f"{scheme}://{backend.address}{path}/props", timeout=2.0,
                          trust_env=False, headers=backend.auth_headers())
        build = reply.json().get("build_info") if reply.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return f"llama-server {build}" if isinstance(build, str) else None


def _rpc_server(backend: Backend, report: HealthReport | None, local: str | None) -> Finding:
    subject = f"rpc-server {backend.address}"
    if report is None:
        return Finding("sharding", subject, "fail", "the sharding plugin did not answer",
                       "enable the llamacpp_rpc plugin (`sollol plugins`)")
    if not report.healthy:
        fix = (f"start it: sollol rpc serve --host 0.0.0.0 --port {backend.port}; if a SOLLOL "
               "gateway has a sharded model loaded on it, it is busy by design")
        if report.extra.get("incompatible"):
            fix = "rebuild that machine's ggml-rpc-server from the same llama.cpp as this one"
        return Finding("sharding", subject, "fail", report.detail, fix)
    detail = report.detail or f"RPC {report.version}"
    if report.memory_free is not None:
        detail += f", {report.memory_free / 2**30:.1f} GiB free"
    if local is None or report.version is None:
        return Finding("sharding", subject, "warn", detail + "; local protocol unknown, not "
                       "compared", f"make the local binaries runnable (`{INSTALL_COMMAND}`)")
    if not _compatible(report.version, local):
        return Finding("sharding", subject, "fail",
                       f"speaks RPC {report.version}, but the local llama-server speaks {local}: "
                       "they cannot shard together",
                       "build both sides from one llama.cpp version (`sollol llamacpp install` "
                       "here, the same release there)")
    return Finding("sharding", subject, "ok", f"{detail}; matches local RPC {local}")


def _compatible(server: str, client: str) -> bool:
    """llama.cpp's rule: same major version, server minor not newer than the client's."""
    try:
        s, c = [tuple(int(p) for p in v.split(".")) for v in (server, client)]
    except ValueError:
        return server == client
    return s[0] == c[0] and s[1] <= c[1]


def _store(cluster: ClusterRuntime) -> Finding:
    names = sorted({n for result in cluster.pm.hook.sollol_gguf_names(config=cluster.config)
                    for n in result or ()})
    if names:
        shown = ", ".join(names[:6]) + (f" (+{len(names) - 6} more)" if len(names) > 6 else "")
        return Finding("store", "Ollama model store", "ok", f"{len(names)} model(s): {shown}")
    status: Status = "fail" if cluster.config["model_sharding_enabled"] else "warn"
    return Finding("store", "Ollama model store", status,
                   "no models found (sharding loads GGUF files from Ollama's store)",
                   "`ollama pull MODEL`, or point SOLLOL at the store: sollol config set "
                   "ollama_models_dir /path/to/.ollama/models (or OLLAMA_MODELS)")


def _gateway_port(host: str, port: int, running: RunningGateway) -> Finding:
    subject = f"gateway port {host}:{port}"
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.bind((host.strip("[]"), port))
        return Finding("gateway", subject, "ok", "free")
    except OSError as exc:
        reason = exc.strerror or str(exc)
    if running.running:
        keys = " (it requires keys)" if running.refused else ""
        return Finding("gateway", subject, "ok",
                       f"a SOLLOL gateway is already running here{keys}")
    return Finding("gateway", subject, "fail", f"cannot listen: {reason}",
                   "stop what uses it, or: sollol config set gateway_port 11436")


def problems(findings: list[Finding]) -> Iterator[Finding]:
    return (f for f in findings if f.status == "fail")
