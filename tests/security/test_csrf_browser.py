"""Cross-site request forgery from a page on this very machine, in a real browser (Debian's
Chromium). The user has opened the dashboard with the admin key as Basic credentials, so the
browser sends them with every request to the gateway; a page served on another loopback port
then sends HTML forms and simple `fetch`es to every endpoint that changes the cluster (add a node
or an rpc-server, reload the config, pull, push, create, copy, delete, upload a blob). Nothing
changes: another port is another site, and even an origin the operator allowed cannot change
anything with what a form can send. The control: that allowed origin's JSON request does add a
node, so the browser really delivers the attacks with the credentials."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sollol.config import write_file
from sollol.core.access import new_key
from sollol.gateway import GatewayThread

CHROMIUM = "/usr/bin/chromium"

# (method, path, body) of every state-changing admin endpoint; forms can send only POST
CHANGES = [("POST", "/sollol/nodes", '{"address": "127.0.0.1:9"}'),
           ("POST", "/sollol/rpc", '{"address": "127.0.0.1:9"}'),
           ("POST", "/sollol/reload", "{}"),
           ("POST", "/api/pull", '{"model": "fresh", "stream": false}'),
           ("POST", "/api/push", '{"model": "m", "stream": false}'),
           ("POST", "/api/create", '{"model": "made", "from": "m", "stream": false}'),
           ("POST", "/api/copy", '{"source": "m", "destination": "stolen"}'),
           ("POST", "/api/blobs/sha256:" + "0" * 64, "x"),
           ("DELETE", "/api/delete", '{"model": "m"}'),
           ("DELETE", "/sollol/nodes/NODE", "")]

# Real <form> posts (each into its own iframe, so the page stays) in the three encodings a form
# has, then simple fetches: no-cors with each form type and with no body type at all.
ATTACK = """
async ([base, changes]) => {
  const done = [];
  for (const [method, path, body] of changes) {
    for (const enctype of ["text/plain", "application/x-www-form-urlencoded",
                           "multipart/form-data"]) {
      if (method !== "POST") break;
      const frame = document.createElement("iframe");
      frame.name = "f" + done.length;
      document.body.appendChild(frame);
      const form = document.createElement("form");
      Object.assign(form, {method: "POST", action: base + path, enctype, target: frame.name});
      const field = document.createElement("input");
      // text/plain sends `name=value`: a JSON body with a throwaway key swallowing the `=`
      field.name = body.slice(0, -1) + ', "x": "';
      field.value = '"}';
      form.appendChild(field);
      document.body.appendChild(form);
      const loaded = new Promise((resolve) => frame.addEventListener("load", resolve));
      form.submit();
      await Promise.race([loaded, new Promise((r) => setTimeout(r, 3000))]);
      done.push(`form ${enctype} ${path}`);
    }
    for (const type of ["text/plain", "application/x-www-form-urlencoded", null]) {
      const init = {method, mode: "no-cors", credentials: "include"};
      if (body) init.body = type ? body : new Blob([body]);
      if (type) init.headers = {"Content-Type": type};
      try { await fetch(base + path, init); done.push(`fetch ${type} ${path}`); }
      catch (error) { done.push(`fetch ${type} ${path}: ${error}`); }
    }
  }
  return done;
}
"""

ALLOWED_JSON = """
async ([base, key]) => {
  const reply = await fetch(base + "/sollol/nodes", {method: "POST", headers: {
    "Content-Type": "application/json", "Authorization": "Bearer " + key},
    body: '{"address": "127.0.0.1:9"}'});
  return reply.status;
}
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium that reaches 127.0.0.1 and nothing else."""
    from pathlib import Path

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (scripts/test does)")
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run",
            "--disable-dev-shm-usage", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def attacker(cats_site: int) -> str:
    """A page about cats on another loopback port: its URL."""
    return f"http://127.0.0.1:{cats_site}"


@pytest.fixture
def cluster(emulator, isolated_config):
    """(gateway, its node, the admin key, a second node that a reload would add)."""
    from sollol.core.runtime import ClusterRuntime

    node, spare = emulator(models=["m"], library=["fresh"]), emulator(models=["s"])
    key = new_key()

    def start(**extra: Any) -> GatewayThread:
        config = {"ollama_nodes": [node.address], "api_keys": [{"name": "ops", "key": key,
                                                                "admin": True}],
                  "health_interval": 0.2, **extra}
        write_file(isolated_config, config)
        gateway = GatewayThread(ClusterRuntime.from_config()).start()
        # a reload would now add `spare`: the config file names it
        write_file(isolated_config, {**config, "ollama_nodes": [node.address, spare.address]})
        return gateway

    yield start, node, key
    return


def nodes(gateway: GatewayThread, key: str) -> list[str]:
    reply = httpx.get(gateway.url + "/sollol/nodes", headers={"Authorization": f"Bearer {key}"})
    return sorted(n["id"] for n in reply.json()["nodes"])


def effects(node: Any) -> dict[str, int]:
    seen = node.stats()["requests"]
    probes = ("/api/version", "/api/tags", "/api/ps", "/api/show")  # health and capabilities
    return {p: n for p, n in seen.items() if not p.startswith(probes)}


def run_attack(browser: Any, gateway: GatewayThread, key: str, page: str, node: Any,
               ) -> tuple[Any, list[str]]:
    """Open the dashboard with Basic credentials, then the attacker's page in the same browser
    context; run the attack. Returns (the context, what the page did)."""
    context = browser.new_context(http_credentials={"username": "me", "password": key})
    dashboard = context.new_page()
    assert dashboard.goto(gateway.url + "/dashboard").status == 200
    changes = [(m, p.replace("NODE", node.address), b) for m, p, b in CHANGES]
    attack_page = context.new_page()
    attack_page.goto(page + "/")
    return context, attack_page.evaluate(ATTACK, [gateway.url, changes])


def test_a_page_on_another_loopback_port_changes_nothing(browser, attacker, cluster):
    start, node, key = cluster
    gateway = start()
    try:
        before = nodes(gateway, key)
        context, done = run_attack(browser, gateway, key, attacker, node)
        context.close()
        assert len(done) == 8 * 6 + 2 * 3, done  # every shot was fired
        assert nodes(gateway, key) == before, done  # no node added, removed, or reloaded in
        assert effects(node) == {}, (effects(node), done)  # nothing reached the node
    finally:
        gateway.stop()


def test_an_allowed_origin_still_cannot_change_anything_with_a_form(browser, attacker,
                                                                    cluster):
    start, node, key = cluster
    gateway = start(allowed_origins=[attacker])
    try:
        before = nodes(gateway, key)
        context, done = run_attack(browser, gateway, key, attacker, node)
        assert nodes(gateway, key) == before, done
        assert effects(node) == {}, (effects(node), done)
        # the control: the allowed site's own app, with its key and JSON (a preflight the
        # allowed origin passes), does add a node
        page = context.pages[-1]
        assert page.evaluate(ALLOWED_JSON, [gateway.url, key]) == 200
        assert "127.0.0.1:9" in nodes(gateway, key)
        context.close()
    finally:
        gateway.stop()


FORM_TYPES = [None, b"text/plain", b"application/x-www-form-urlencoded",
              b"multipart/form-data; boundary=x", b"text/plain; charset=application/json",
              b"application/jsonx", b"text/plain, application/json"]


def test_every_changing_route_needs_what_a_form_cannot_send():
    """Every route of the route table that changes the cluster, now and as it grows: refused
    with each body type a form or a simple fetch can send, admitted with JSON or the header;
    inference routes are unaffected."""
    from sollol.config import load_config
    from sollol.errors import Forbidden
    from sollol.gateway.guard import Guard
    from sollol.gateway.route_table import ROUTES

    guard = Guard(load_config(overrides={"api_keys": []}), "127.0.0.1")
    changing = [(r, m) for r in ROUTES for m in r.methods if m not in ("GET", "HEAD")
                and r.kind in ("manage", "blobs", "admin")]
    assert len(changing) >= 11  # pull push create copy delete blobs nodes(2) rpc(2) reload
    for route, method in changing:
        path = route.path + ("x" if route.prefix else "")
        for kind in FORM_TYPES:
            headers = [(b"host", b"127.0.0.1")] + ([(b"content-type", kind)] if kind else [])
            with pytest.raises(Forbidden, match="cross-site request forgery"):
                guard.admit(path, method, headers)
        for allowed in ([(b"content-type", b"application/json")],
                        [(b"content-type", b"Application/JSON ; charset=utf-8")],
                        [(b"x-requested-with", b"sollol")]):
            guard.admit(path, method, [(b"host", b"127.0.0.1"), *allowed])
    for route in ROUTES:
        if route.kind == "dispatch":
            guard.admit(route.path, "POST", [(b"content-type", b"text/plain")])
