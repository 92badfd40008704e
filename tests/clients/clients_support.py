"""Helpers for the tests with real clients (tests/clients/).

The npm packages (tests/clients/package.json, pinned) live in tests/clients/node_modules and the
pip ones in the test extra; `scripts/test` installs both (and Node.js when it is missing). A
missing client FAILS its test, naming what to install: a skipped acceptance test proves nothing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest

HERE = Path(__file__).parent
NODE_MODULES = HERE / "node_modules"
INSTALL_HINT = ("run scripts/test (it installs Node.js and npm when missing, then "
                "`npm ci` in tests/clients/)")
CLIENT_KEY = "sk-sollol-clients-0123456789abcdef"
ADMIN_KEY = "sk-sollol-admin-0123456789abcdef"
KEYS = [{"name": "clients", "key": CLIENT_KEY}, {"name": "admin", "key": ADMIN_KEY, "admin": True}]


def npm_package(name: str) -> Path:
    """The installed npm package's folder; FAILS the test when Node.js or the package is
    missing."""
    if shutil.which("node") is None:
        pytest.fail(f"Node.js is not installed: {INSTALL_HINT}")
    folder = NODE_MODULES / name
    if not (folder / "package.json").is_file():
        pytest.fail(f"the npm package {name} is not installed in {NODE_MODULES}: {INSTALL_HINT}")
    return folder


def npm_version(name: str) -> str:
    return str(json.loads((npm_package(name) / "package.json").read_text())["version"])


@attrs.frozen
class ClientGateway:
    """A gateway (with access keys) over a real local cluster, and what it recorded."""

    url: str
    model: str
    embed_model: str

    def events(self) -> list[dict[str, Any]]:
        """The last 200 routed requests, oldest first."""
        reply = httpx.get(self.url + "/sollol/events", timeout=30,
                          headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        reply.raise_for_status()
        return list(reply.json()["events"])

    def settled_events(self, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """The events once at least `count` are recorded (a cut stream is recorded when the
        gateway notices the client left)."""
        deadline = time.monotonic() + timeout
        while True:
            events = self.events()
            if len(events) >= count or time.monotonic() > deadline:
                return events
            time.sleep(0.1)

    def overview(self) -> dict[str, Any]:
        return httpx.get(self.url + "/sollol/overview", timeout=30,
                         headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()


def run_client(args: list[str], env: dict[str, str], timeout: float = 600.0,
               cwd: Path = HERE) -> tuple[int, str, str]:
    """Run a client to its end (killed if it outlives `timeout`): (exit code, stdout, stderr)."""
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False)
    return done.returncode, done.stdout, done.stderr
