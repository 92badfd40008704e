"""`sollol run --access-log text|json`: one line per routed request, on stdout.

Registered as a plugin object implementing `sollol_request_routed`, so it sees exactly the
events dashboards and metrics see (also requests refused before routing).
"""

from __future__ import annotations

import sys
import time
from typing import IO, TYPE_CHECKING, Any

from sollol.core.logtext import escape, json_line
from sollol.hookspecs import hookimpl

if TYPE_CHECKING:
    from sollol.core.runtime import ClusterRuntime
    from sollol.models import RouteEvent

FORMATS = ("text", "json")


class AccessLog:
    """Writes each finished request as a line: who asked for what, where it went, how it ended."""

    def __init__(self, fmt: str = "text", stream: IO[str] | None = None) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"access log format {fmt!r}: expected one of {', '.join(FORMATS)}")
        self.fmt = fmt
        self.stream = stream or sys.stdout

    @hookimpl
    def sollol_request_routed(self, event: RouteEvent, cluster: ClusterRuntime) -> None:
        try:
            self.stream.write(self.line(event) + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stdout must not fail requests
            pass

    def line(self, event: RouteEvent) -> str:
        fields: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(event.time))
            + f".{int(event.time % 1 * 1000):03d}Z",
            "model": event.model, "endpoint": event.endpoint, "api": event.api,
            "route": event.route or None, "node": event.backend, "status": event.status,
            "latency_ms": round(event.duration_s * 1000, 1),
            "ttft_ms": round(event.ttft_s * 1000, 1) if event.ttft_s is not None else None,
            "prompt_tokens": event.prompt_tokens, "tokens": event.tokens,
            "attempts": event.attempts, "policy": event.policy or None,
        }
        if event.error:
            fields["error"] = event.error
        if self.fmt == "json":
            return json_line(fields)
        tokens = "-" if event.tokens is None else str(event.tokens)
        # every string a client or a node chose is escaped: one request is one line
        error = escape(event.error).replace('"', '\\"') if event.error else ""
        error = f' error="{error}"' if error else ""
        return (f"{fields['time']} {event.status} {escape(event.api)}/{escape(event.endpoint)} "
                f"model={escape(event.model)} route={escape(event.route or '-')} "
                f"node={escape(event.backend or '-')} {fields['latency_ms']}ms tokens={tokens} "
                f"attempts={event.attempts}{error}")
