"""The overview (`/sollol/overview`) as rich tables: what `sollol status` prints."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.table import Table
from rich.text import Text

from sollol.core.units import format_bytes

HEALTH_STYLE = {"healthy": "green", "ready": "green", "up": "green", "starting": "yellow",
                "unknown": "yellow", "ejected": "red", "down": "red", "failed": "red",
                "draining": "yellow", "stopped": "dim"}
BAR = 24
"""Width of a coordinator's layer bar, in characters."""


def render(data: dict[str, Any], source: str) -> RenderableType:
    """Header, nodes, rpc-servers, coordinators and recent requests."""
    parts: list[RenderableType] = [header(data, source)]
    if data.get("nodes"):
        parts.append(_Fitted(nodes_table(data["nodes"])))
    if data.get("rpc_servers"):
        parts.append(_Fitted(rpc_table(data["rpc_servers"])))
    if data.get("coordinators"):
        parts.append(_Fitted(coordinators_table(data["coordinators"])))
    if not (data.get("nodes") or data.get("rpc_servers") or data.get("coordinators")):
        parts.append(Text("no nodes, rpc-servers or coordinators yet", style="yellow"))
    if data.get("recent"):
        parts.append(_Fitted(requests_table(data["recent"][-10:])))
    return Group(*parts)


def header(data: dict[str, Any], source: str) -> Text:
    requests = data.get("requests") or {}
    text = Text()
    text.append(f"SOLLOL {data.get('version', '?')}", style="bold")
    text.append(f" at {source} · up {duration(data.get('uptime_s'))}")
    modes = data.get("modes") or {}
    on = [name for name, key in (("pool", "task_distribution_enabled"),
                                 ("sharding", "model_sharding_enabled")) if modes.get(key)]
    text.append(f" · routes: {', '.join(on) or 'none'}")
    if data.get("policy"):
        text.append(f" · policy {data['policy']}")
    text.append(f"\nrunning {requests.get('running', 0)} · waiting {requests.get('waiting', 0)}")
    if data.get("metrics_enabled"):
        errors = requests.get("errors", 0)
        minute = data.get("last_minute") or {}
        text.append(f" · {minute.get('requests_per_second', 0):.2f} req/s, "
                    f"{minute.get('tokens_per_second', 0):.0f} tok/s (last minute)")
        text.append(f" · {requests.get('requests', 0)} requests")
        text.append(f" ({errors} errors)", style="red" if errors else "")
        text.append(f" · {requests.get('generation_tokens', 0)} tokens generated"
                    f" · {requests.get('failovers', 0)} failovers"
                    f" · {requests.get('queue_rejections', 0)} rejected (429)")
    else:
        text.append(" · metrics off (metrics_enabled = false)", style="dim")
    return text


def nodes_table(nodes: list[dict[str, Any]]) -> Table:
    table = Table(title="nodes", title_justify="left", expand=True)
    for column in ("node", "kind", "health", "load", "loaded models", "tok/s", "served",
                   "last error / detail"):
        _column(table, column)
    for node in nodes:
        health = node.get("health", "?")
        loaded = ", ".join(
            f"{m['name']} ({format_bytes(m['size_vram'])})" if m.get("size_vram") else m["name"]
            for m in node.get("running") or []) or "-"
        stats = node.get("stats") or {}
        problem = stats.get("last_error") if health == "healthy" else node.get("detail")
        _add_row(table,
            node.get("id", "?"), node.get("api") or node.get("kind", "?"),
            Text(health, style=HEALTH_STYLE.get(health, "")),
            f"{node.get('in_flight', 0)}/{node.get('limit', '?')}", loaded,
            speed(node), f"{node.get('served', 0)} ok, {node.get('failed', 0)} failed",
            Text(str(problem or "-"), style="red" if problem else "dim"))
    return table


def rpc_table(servers: list[dict[str, Any]]) -> Table:
    table = Table(title="rpc-servers", title_justify="left", expand=True)
    for column in ("address", "health", "protocol", "devices", "memory free / total",
                   "coordinator"):
        _column(table, column)
    for server in servers:
        health = "up" if server.get("healthy") else "down"
        memory = "-"
        if server.get("memory_total"):
            memory = (f"{format_bytes(server.get('memory_free'))} / "
                      f"{format_bytes(server['memory_total'])}")
        devices = ", ".join(str(d.get("name")) for d in server.get("devices") or []) or "-"
        where = server.get("address", "?")
        if server.get("member"):  # a machine joined with `sollol join`: its name, then the link
            where = f"{server['member']} ({where})"
        _add_row(table, where, Text(health, style=HEALTH_STYLE[health]),
                      server.get("version") or "?", devices, memory,
                      server.get("coordinator") or server.get("incompatible") or "-")
    return table


def coordinators_table(coordinators: list[dict[str, Any]]) -> Table:
    table = Table(title="coordinators", title_justify="left", expand=True)
    for column in ("model", "state", "layers per rpc-server", "up", "restarts", "tok/s"):
        _column(table, column)
    for coord in coordinators:
        state = coord.get("state", "?")
        if coord.get("draining") and state == "ready":
            state = "draining"
        label = Text(state, style=HEALTH_STYLE.get(state, ""))
        if coord.get("draining"):
            label.append(f"\n{coord['draining'][:80]}", style="dim")
        if state == "starting" and coord.get("progress"):
            label.append(f"\n{coord['progress'][:60]}", style="dim")
        if coord.get("error"):
            label.append(f"\n{coord['error'][:120]}", style="red")
        restarts = max(int(coord.get("starts") or 1) - 1, 0)
        _add_row(table, coord.get("model", "?"), label, layer_bars(coord),
                      duration(time.time() - coord["started_at"]) if coord.get("started_at")
                      else "-", str(restarts), speed(coord))
    return table


def layer_bars(coord: dict[str, Any]) -> Text:
    """One bar per rpc-server, its length that server's share of the model's layers."""
    report = coord.get("layers") or {}
    shares = [*report.get("backends", []), report.get("coordinator") or {}]
    total = sum(s.get("layers") or 0 for s in shares)
    if not total:
        return Text("not known yet", style="dim")
    text = Text()
    # llama.cpp's device names (`Vulkan0`) after the address, where the gateway knows them
    labels = [share.get("address", "?") + (f" ({','.join(share['devices'])})"
                                           if share.get("devices") else "") for share in shares]
    width = max(22, *(len(label) for label in labels))
    for share, where in zip(shares, labels, strict=True):
        count = share.get("layers") or 0
        if not count and share is report.get("coordinator"):
            continue
        filled = round(BAR * count / total)
        text.append(f"{where:<{width}} ")
        text.append("█" * filled, style="cyan")
        text.append("░" * (BAR - filled), style="dim")
        text.append(f" {count} [{share.get('layer_range') or '-'}]\n")
    text.rstrip()
    return text


def requests_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="recent requests", title_justify="left", expand=True)
    for column in ("time", "model", "route", "node", "status", "first token", "tok/s",
                   "reason"):
        _column(table, column)
    for row in reversed(rows):
        status = row.get("status", 0)
        _add_row(table,
            time.strftime("%H:%M:%S", time.localtime(row.get("time", 0))), row.get("model", ""),
            row.get("route") or "-", row.get("backend") or "-",
            Text(str(status), style="green" if status < 400 else "red"),
            seconds(row.get("ttft_s")),
            f"{row['tokens_per_second']:.1f}" if row.get("tokens_per_second") else "-",
            (row.get("error") or row.get("reason") or "")[:120])
    return table


FREE_TEXT = ("last error / detail", "reason", "loaded models", "layers per rpc-server")
"""Columns of prose or lists: in the narrow layout each goes on a line of its own."""


def _add_row(table: Table, *cells: Any) -> None:
    """A row whose plain strings are shown as they are: a node id or a model name such as
    `[red]x` is text, not rich markup (controls are escaped when the CLI reads the JSON)."""
    table.add_row(*(Text(cell) if isinstance(cell, str) else cell for cell in cells))


def _column(table: Table, name: str) -> None:
    """Short columns stay on one line; the free-text ones take what room is left and wrap."""
    if name in FREE_TEXT or name in ("state", "devices"):
        table.add_column(name, overflow="fold", ratio=1)
    else:
        table.add_column(name, no_wrap=True, overflow="ellipsis")


class _Fitted:
    """A table where its words fit the width; else each row as lines (`name: value`).

    A table too wide for the terminal (80 columns, or piped) would squeeze its free-text
    columns into strips two letters wide. Whether it fits is measured at print time.
    """

    def __init__(self, table: Table) -> None:
        self.table = table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        # the narrowest table in which no word is cut: each column as wide as its longest
        # word (the short ones as wide as their longest cell), plus padding and borders
        needed = self.table._extra_width
        for column in self.table.columns:
            cells = [_plain(c) for c in column._cells]
            words = [w for text in [str(column.header), *cells] for w in text.split()]
            if column.no_wrap:
                words += [line for text in cells for line in text.splitlines()]
            column.min_width = max(map(len, words), default=1)
            needed += column.min_width + 2  # padding (0, 1)
        if needed <= options.max_width:
            yield self.table
            return
        yield Text(str(self.table.title or ""), style="italic")
        columns = self.table.columns
        for row in range(self.table.row_count):
            cells = [(str(c.header), c._cells[row]) for c in columns]
            yield Text("  ").join(_labelled(name, cell) for name, cell in cells
                                  if name not in FREE_TEXT)
            for name, cell in cells:
                if name in FREE_TEXT and _plain(cell).strip() not in ("", "-"):
                    line = Text(f"    {name}: ", style="dim")
                    yield line.append_text(cell if isinstance(cell, Text) else Text(str(cell)))


SELF_EVIDENT = ("node", "kind", "health", "time", "model", "route", "address", "state")
"""Values that need no label in the narrow layout (an address, a state, a time)."""


def _labelled(name: str, cell: Any) -> Text:
    text = cell.copy() if isinstance(cell, Text) else Text(str(cell))
    return text if name in SELF_EVIDENT else Text(f"{name} ", style="dim").append_text(text)


def _plain(cell: Any) -> str:
    return cell.plain if isinstance(cell, Text) else str(cell)


def speed(item: dict[str, Any]) -> str:
    """Tokens/s: the server's own figure (llama-server /metrics) when there is one."""
    scraped = (item.get("throughput") or {}).get("tokens_per_second")
    if scraped:
        return f"{scraped:.1f} (server)"
    measured = (item.get("stats") or {}).get("tokens_per_second")
    measured = measured or item.get("tokens_per_second")
    return f"{measured:.1f}" if measured else "-"


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def duration(value: float | None) -> str:
    if value is None:
        return "?"
    value = int(value)
    if value < 60:
        return f"{value}s"
    if value < 3600:
        return f"{value // 60}m {value % 60}s"
    return f"{value // 3600}h {value % 3600 // 60}m"
