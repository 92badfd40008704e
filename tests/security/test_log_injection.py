"""Log injection: strings a client or a node chose (model names, a node's error echoing the
client's input, as llama-server does for a bad `response_format`) never forge a log line or reach
the reader's terminal as control characters. One request is exactly one access-log line, in both
formats, whatever the strings; SOLLOL's own log lines are escaped the same way."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys

import httpx
from hypothesis import given
from hypothesis import strategies as st

from sollol.core.logtext import OneLineFormatter, escape
from sollol.core.processes import free_port, wait_http
from sollol.gateway.access_log import AccessLog
from sollol.models import RouteEvent
from sollol.testing.echo_node import echo_script

# every character a line reader, a terminal or an encoder could act on, and plain text around
HOSTILE = st.text(st.one_of(
    st.characters(codec="utf-8"), st.sampled_from("\n\r\x1b\x85\u2028\u2029\x0b\x0c\x1c\x9b\x00"),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)), max_size=40)
CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
ACCESS_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \d{3} ")
FORGED = "\n2026-01-01T00:00:00.000Z 200 ollama/chat model=FORGED\r\x1b[2K\x1b]0;FORGED\x07"


def event(model: str, endpoint: str, route: str, backend: str, error: str,
          policy: str) -> RouteEvent:
    return RouteEvent(model=model, endpoint=endpoint, api="ollama", route=route, policy=policy,
                      reason="r", backend=backend, status=400, ok=False, duration_s=0.01,
                      error=error or None)


@given(HOSTILE, HOSTILE, HOSTILE, HOSTILE, HOSTILE, HOSTILE)
def test_one_request_is_exactly_one_line_in_both_formats(model, endpoint, route, backend, error,
                                                         policy):
    routed = event(model, endpoint, route, backend, error, policy)
    for fmt in ("text", "json"):
        out = io.StringIO()
        AccessLog(fmt, out).sollol_request_routed(routed, None)  # type: ignore[arg-type]
        written = out.getvalue()
        assert written.endswith("\n") and len(written.splitlines()) == 1, (fmt, written)
        assert not CONTROLS.search(written[:-1]), (fmt, written)
        written.encode("utf-8")  # strict: nothing unencodable was written
        if fmt == "json":
            fields = json.loads(written)
            assert (fields["model"], fields["endpoint"]) == (model, endpoint)
            assert fields.get("error") == (error or None) and fields["node"] == backend


@given(HOSTILE)
def test_escaping_is_reversible_text(text):
    """Distinct strings stay distinct in the log (a backslash is escaped too)."""
    escaped = escape(text)
    assert not CONTROLS.search(escaped)
    decoded = escaped.encode("latin-1", "backslashreplace").decode("unicode_escape",
                                                                   "surrogatepass")
    assert decoded == text


@given(HOSTILE)
def test_sollol_log_lines_are_one_line(text):
    record = logging.LogRecord("sollol.pool", logging.WARNING, __file__, 1,
                               "node %s said: %s", (text, text), None)
    line = OneLineFormatter("%(levelname)s: %(message)s").format(record)
    assert len(line.splitlines()) == 1 and not CONTROLS.search(line)


def test_a_node_echoing_a_client_string_forges_no_line(processes, hostile_node,
                                                       sollol_isolated_config):
    """A real `sollol run --access-log text` behind a node whose errors echo the client's
    `format` and `response_format`; the client sends hostile strings on every inference
    dialect and as model names. Every request is one access line; no other line is forged."""
    def answer(request):
        echoed = " ".join(strings(request.json()))  # decoded, as llama-server quotes them
        return 400, {"error": {"message": f"invalid format: {echoed}",
                               "type": "invalid_request_error", "code": 400}}

    node = hostile_node(echo_script(answer))
    port = free_port()
    proc = processes.start("sollol-run", [
        sys.executable, "-m", "sollol", "run", "--port", str(port), "--access-log", "text"],
        env={**os.environ, "SOLLOL_OLLAMA_NODES": node.url.removeprefix("http://"),
             "SOLLOL_MODEL_SHARDING_ENABLED": "false"})
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/api/version", process=proc, timeout=120)
    messages = [{"role": "user", "content": FORGED}]
    sent = 0
    with httpx.Client(timeout=60) as client:
        for path, body in [
            ("/api/chat", {"model": "m", "messages": messages, "format": FORGED}),
            ("/api/generate", {"model": "m", "prompt": FORGED, "stream": False}),
            ("/v1/chat/completions", {"model": "m", "messages": messages,
                                      "response_format": {"type": FORGED}}),
            ("/v1/messages", {"model": "m", "max_tokens": 5, "messages": messages}),
            ("/v1/completions", {"model": "m", "prompt": FORGED}),
            ("/v1/responses", {"model": "m", "input": FORGED}),
        ]:
            reply = client.post(url + path, json=body)
            assert 400 <= reply.status_code < 500, (path, reply.text)
            sent += 1
    proc.stop()  # every line is written and flushed
    text = proc.log_text()
    lines = text.splitlines()
    assert sum(1 for line in lines if ACCESS_LINE.match(line)) == sent, text
    assert not any(line.startswith(("2026-01-01", "FORGED")) for line in lines), text
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text, text
    assert "\\n2026-01-01T00:00:00.000Z 200 ollama/chat model=FORGED\\r\\x1b[2K" in text


def strings(value):
    """Every string in a JSON value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)
