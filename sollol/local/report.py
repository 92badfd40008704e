"""What `sollol demo` prints: short tables a person can read, not logs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import click

from sollol.core.names import same_model
from sollol.llamacpp import BuildProgress
from sollol.local.model_set import LocalModel
from sollol.local.servers import LocalCluster
from sollol.local.traffic import Reply

MIB = 1024 * 1024


def model_line(model: LocalModel) -> str:
    return (f"{model.name}: {model.layers} layers, {model.parameters / 1e6:.1f}M parameters, "
            f"{model.size / MIB:.1f} MiB")


def servers(local: LocalCluster) -> list[str]:
    """One line per server the local cluster runs."""
    assert local.models is not None
    lines = [f"  rpc-server  {s.address}" for s in local.rpc]
    lines += [f"  pool node   {s.address}  (llama-server serving {local.models.small.name})"
              for s in local.pool]
    return lines


def replies(rows: Sequence[Reply]) -> list[str]:
    """Each request: route, backend, time, tokens (or its error)."""
    lines = [f"  {'#':>2}  {'route':<9} {'backend':<46} {'time':>7}  tokens"]
    for number, reply in enumerate(rows, 1):
        if not reply.ok:
            lines.append(f"  {number:>2}  FAILED    HTTP {reply.status}: {reply.error[:100]}")
            continue
        tokens = "-" if reply.tokens is None else str(reply.tokens)
        lines.append(f"  {number:>2}  {reply.route:<9} {reply.backend:<46} "
                     f"{reply.seconds:>6.2f}s  {tokens}")
    return lines


def spread(rows: Sequence[Reply]) -> str:
    """How the requests were shared out, e.g. "4 on 127.0.0.1:5001, 4 on 127.0.0.1:5002"."""
    counts = Counter(r.backend for r in rows if r.ok)
    return ", ".join(f"{n} on {backend}" for backend, n in sorted(counts.items())) or "none"


def decisions(rows: Sequence[Reply]) -> list[str]:
    """Each distinct routing decision once, with the policy's reason."""
    seen: dict[tuple[str, str], Reply] = {}
    for reply in rows:
        if reply.ok:
            seen.setdefault((reply.model, reply.route), reply)
    return [f"  {model} -> {route} (policy {r.policy}): {r.reason}"
            for (model, route), r in seen.items()]


def layers(snapshot: Mapping[str, Any], model: str) -> list[str]:
    """The layer distribution of `model`'s coordinator, one line per rpc-server."""
    coordinator = next((c for c in snapshot.get("coordinators", [])
                        if same_model(str(c.get("model")), model)), None)
    if coordinator is None:
        return [f"  no coordinator for {model} (see the sharding route's warnings: "
                f"{snapshot.get('warnings', [])[-3:]})"]
    report = coordinator.get("layers")
    loaded = coordinator.get("load_seconds")
    head = (f"  coordinator {coordinator.get('url')} (llama-server --rpc, pid "
            f"{coordinator.get('pid')}" + (f", loaded in {loaded:.2f}s)" if loaded else ")"))
    if not report:
        return [head, "  layer distribution: not reported by llama-server"]
    lines = [head, f"  {report.get('block_count')} blocks, {report.get('offloaded')} layers "
                   f"offloaded, output layer on {report.get('output_layer_on')}"]
    shares = [*report.get("backends", []), report.get("coordinator") or {}]
    for share in shares:
        if not share:
            continue
        name = share.get("address", "?")
        label = "rpc-server " if name != "coordinator" else ""
        lines.append(f"    {label + name:<27} {share.get('layers', 0):>3} layers "
                     f"[{share.get('layer_range') or '-':<6}]  "
                     f"weights {share.get('weights_mib', 0):6.1f} MiB  "
                     f"KV {share.get('kv_mib', 0):5.1f} MiB")
    return lines


def clients(url: str, model: str) -> list[str]:
    """How to point a client at the gateway."""
    return [
        f"  Ollama API:  {url}   (e.g. OLLAMA_HOST={url} ollama run {model})",
        f"  OpenAI API:  {url}/v1",
        f"  curl {url}/api/generate -d '{{\"model\": \"{model}\", \"prompt\": \"hello\"}}'",
        f"  state:       {url}/sollol/state   decisions: {url}/sollol/events",
        f"  watch it:    {url}/dashboard in a browser, or `sollol status --watch --gateway "
        f"{url}`",
    ]


class BuildPrinter:
    """Build progress for a first run: phase changes, then every 10% of the compile."""

    def __init__(self, *, err: bool = False) -> None:
        self.err = err
        self.phase = ""
        self.shown = -10

    def __call__(self, event: BuildProgress) -> None:
        stamp = f"{int(event.elapsed) // 60}m{int(event.elapsed) % 60:02d}s"
        if event.phase != self.phase:
            self.phase, self.shown = event.phase, -10
            if event.phase == "cached":
                return
            hints = {"build": " (first run only: about 6-7 minutes on 2 cores)",
                     "waiting": f": {event.line}", "download": f": {event.line}"}
            hint = hints.get(event.phase, "")
            click.echo(f"  [{stamp}] {event.phase}{hint}", err=self.err)
        elif event.percent is not None and event.percent >= self.shown + 10:
            self.shown = event.percent - event.percent % 10
            click.echo(f"  [{stamp}] {event.phase} {event.percent}%", err=self.err)
