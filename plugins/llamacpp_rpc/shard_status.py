"""`sollol shard status` without a gateway, and the text rendering of either source."""

from __future__ import annotations

import json
from typing import Any

from . import attached, procs, rpc_devices
from .health import check
from .options import slug

GIB = 1024**3


def local_status(config: Any) -> dict[str, Any]:
    """Live coordinators from pid files (with saved reports) and probes of free rpc-servers."""
    from .options import state_dir
    from .rpc_discovery import discover

    folder = state_dir(config)
    coordinators = []
    held: dict[str, str] = {}
    for record in procs.read_pid_files(folder / "coordinators"):
        owner = f"coordinator pid {record['pid']} ({record.get('model', '?')})"
        held.update(dict.fromkeys(record.get("backends", []), owner))
        report = folder / "reports" / f"{slug(record.get('model', ''))}.json"
        try:
            saved = json.loads(report.read_text())
        except (OSError, ValueError):
            saved = {}
        # a report describes the process that wrote it: one left by an earlier coordinator of
        # the model (placed elsewhere, maybe) says nothing about this one, still loading
        mine = saved.get("pid") == record["pid"]
        state = "ready" if mine else "starting"
        coordinators.append({**(saved if mine else {}), "model": record.get("model"),
                             "pid": record["pid"],
                             "backends": record.get("backends", []), "state": state,
                             "url": f"http://127.0.0.1:{record.get('port')}",
                             "log": record.get("log")})
    with attached.holding(held):  # their coordinators' rpc-servers: nothing below probes them
        backends = [_backend(config, folder, b) for b in discover(config)]
    return rpc_devices.annotate({"source": f"local (pid files in {folder})", "backends": backends,
                                 "coordinators": coordinators, "unservable": {}, "warnings": []})


def _backend(config: Any, folder: Any, backend: Any) -> dict[str, Any]:
    """A free rpc-server as `local_status` shows it: probed (unless attached), its devices."""
    report = check(backend, config["rpc_probe_timeout"])
    names = rpc_devices.names(folder / "rpc-servers", backend.address)
    devices = [{**d, "name": names[i] if i < len(names) else f"device {i}"}
               for i, d in enumerate(report.extra.get("devices", []))]
    return {"id": backend.id, "address": backend.address, "healthy": report.healthy,
            "detail": report.detail, "version": report.version,
            "memory_free": report.memory_free, "memory_total": report.memory_total,
            "attached_to": report.extra.get("attached"), "devices": devices,
            "device_names": list(names)}


def render(data: dict[str, Any]) -> str:
    """Human-readable status: rpc-servers, then each coordinator's layers per rpc-server."""
    out = [f"source: {data.get('source', 'gateway')}"]
    if data.get("unavailable"):
        out.append(f"unavailable: {data['unavailable']}")
    out.append("rpc-servers:")
    for b in data.get("backends", []) or [{}]:
        if not b:
            out.append("  (none: set rpc_backends or run `sollol rpc serve`)")
            continue
        mark = "up  " if b.get("healthy") else "DOWN"
        mem = ""
        if b.get("memory_total"):
            mem = f"  {b['memory_free'] / GIB:.1f}/{b['memory_total'] / GIB:.1f} GiB free"
        held = f"  held by {b['attached_to']}" if b.get("attached_to") else ""
        devices = b.get("devices") or []
        named = b.get("device_names") or []
        on = f" on {','.join(named)}" if named else ""
        out.append(f"  {mark} {b['address']:<22} v{b.get('version') or '?'}{on}{mem}{held}")
        if not b.get("healthy") or b.get("incompatible"):
            out.append(f"       {b.get('incompatible') or b.get('detail')}")
        if len(devices) > 1:
            out.extend(f"       {d.get('name') or 'device ' + str(d.get('index'))}: "
                       f"{d.get('free', 0) / GIB:.1f}/{d.get('total', 0) / GIB:.1f} GiB free"
                       for d in devices)
    for c in data.get("coordinators", []):
        load = f", loaded in {c['load_seconds']}s" if c.get("load_seconds") else ""
        out.append(f"model {c.get('model')}: {c.get('state')} (pid {c.get('pid')}, "
                   f"{c.get('url')}{load})")
        if c.get("error"):
            out.append(f"  error: {c['error']}")
        if c.get("state") == "starting" and c.get("upload"):
            out.append("  loading: " + ", ".join(
                f"{address} {u['bytes'] / GIB:.2f}/{u['expected_bytes'] / GIB:.2f} GiB"
                for address, u in c["upload"].items()))
        if c.get("relay"):
            out.append("  relay: " + ", ".join(
                f"{address} {r['accepted_bytes'] / GIB:.2f} GiB taken, "
                f"{r['delivered_bytes'] / GIB:.2f} sent, {r['backlog_bytes'] / GIB:.2f} waiting, "
                f"{r['hash_local']} hash(es) answered here"
                + ("" if r["connected"] or not r.get("lost") else f", lost: {r['lost']}")
                for address, r in c["relay"].items()))
        if c.get("cache_fill"):
            out.append("  cache fill: " + ", ".join(
                f"{address} {f['done']}/{f['tensors']} tensors "
                f"{f['sent_bytes'] / GIB:.2f}/{f['bytes'] / GIB:.2f} GiB sent, {f['state']}"
                for address, f in c["cache_fill"].items()))
        placement = (c.get("placement") or {}).get("reason")
        if placement:
            out.append(f"  placement: {placement}")
        if c.get("pipeline") or c.get("pipeline_expected"):
            out.append(f"  pipeline parallelism: "
                       f"{c.get('pipeline') or 'expected ' + c['pipeline_expected']}")
        if slots := c.get("slots"):
            total = slots["total"] or "llama-server's own"
            out.append(f"  slots: {slots['busy']}/{total} busy, {slots['queued']} "
                       f"queued, {slots['refused']} refused (429)")
        report = c.get("layers")
        if not report:
            out.append("  layer distribution: not known yet")
            continue
        out.append(f"  layers offloaded: {report.get('offloaded')} "
                   f"(output layer on {report.get('output_layer_on')})")
        for share in [*report.get("backends", []), report.get("coordinator", {})]:
            where = share.get("address", "?")
            if share.get("devices"):
                where += f" ({','.join(share['devices'])})"
            out.append(f"  {where:<22} {share.get('layers', 0):>3} layers "
                       f"[{share.get('layer_range') or '-'}]  weights "
                       f"{share.get('weights_mib', 0):.1f} MiB  "
                       f"KV {share.get('kv_mib', 0):.1f} MiB")
    if sched := data.get("scheduler"):
        per = sched["slots_per_coordinator"] or "llama-server's own"
        out.append(f"scheduler: {sched['waiting']}/{sched['queue_size']} waiting, "
                   f"{per} slot(s) per coordinator")
    for model, why in (data.get("unservable") or {}).items():
        out.append(f"unservable {model}: {why.get('reason')}")
    for warning in data.get("warnings", [])[-5:]:
        out.append(f"warning: {warning}")
    return "\n".join(out)
