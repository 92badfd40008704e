"""Every model a management request reads from is checked against the key (issue 27,
finding 3): an admin key for `tiny*` cannot copy, create, pull, push or delete its way to a
model it may not use.

A real gateway over an emulated Ollama node (tests/security/conftest.py); `carol` is an admin
key for `tiny*`, `root` one for every model. Each refused request is shown to work for `root`
(or with an allowed source), and the node is shown to hold no new model afterwards.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sollol.gateway.route_table import ROUTES

SOURCES = [
    ("/api/copy", {"source": "secret:7b", "destination": "tiny-stolen"}),
    ("/api/copy", {"source": "library/SECRET:7b", "destination": "tiny-stolen"}),
    ("/api/create", {"model": "tiny-stolen", "from": "secret:7b"}),
    ("/api/create", {"model": "tiny-stolen", "modelfile": "FROM secret:7b"}),
    ("/api/create", {"model": "tiny-stolen", "modelfile": "FROM tiny:1b\nADAPTER secret:7b"}),
    ("/api/create", {"model": "tiny-stolen", "name": "secret:7b", "from": "tiny:1b"}),
    ("/api/create", {"model": "tiny-stolen", "modelfile": "FROM ../blobs/sha256-" + "0" * 64}),
    ("/api/create", {"model": "tiny-stolen", "path": "/srv/Modelfile"}),
    ("/api/create", {"model": "tiny-stolen", "files": {"model.gguf": "sha256:" + "1" * 64}}),
    ("/api/create", {"model": "tiny-stolen", "from": "tiny:1b",
                     "adapters": {"a.gguf": "sha256:" + "2" * 64}}),
    ("/api/pull", {"model": "secret-new"}),
    ("/api/pull", {"model": "tiny-new", "name": "secret-new"}),
    ("/api/push", {"model": "secret:7b"}),
    ("/api/delete", {"model": "secret:7b"}),
    ("/api/delete", {"name": "secret:7b"}),
]
"""A request naming a hidden model (or blob, or file) in each field a management request reads
from; every management route of the route table appears."""


def test_every_management_route_is_covered():
    managed = {r.path for r in ROUTES if r.kind == "manage"}
    assert managed == {path for path, _ in SOURCES}


@pytest.mark.parametrize(("path", "body"), SOURCES,
                         ids=[f"{p} {sorted(b)}" for p, b in SOURCES])
def test_a_limited_admin_key_cannot_reach_a_hidden_model_through_a_source(scoped, path, body):
    method = "DELETE" if path == "/api/delete" else "POST"
    held = scoped.models()
    reply = scoped.post(path, {**body, "stream": False}, scoped.manager, method=method)
    assert reply.status_code == 403, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    assert "carol" in reply.json()["error"]
    assert scoped.models() == held  # nothing was made, copied, pulled or deleted
    assert scoped.node.stats()["pushed"] == []


def test_the_same_requests_work_inside_the_globs_and_for_an_unlimited_key(scoped):
    ok = scoped.post("/api/create", {"model": "tiny-copy", "from": "tiny:1b", "stream": False},
                     scoped.manager)
    assert ok.status_code == 200, ok.text
    ok = scoped.post("/api/create", {"model": "tiny-copy2", "modelfile": "\tfrom tiny:1b\n"
                                     "SYSTEM hello", "stream": False}, scoped.manager)
    assert ok.status_code == 200, ok.text
    assert scoped.post("/api/copy", {"source": "tiny:1b", "destination": "tiny-copy3"},
                       scoped.manager).status_code == 200
    assert {"tiny-copy:latest", "tiny-copy2:latest", "tiny-copy3:latest"} <= scoped.models()
    root = scoped.post("/api/create", {"model": "tiny-root", "from": "secret:7b",
                                       "stream": False}, scoped.admin)
    assert root.status_code == 200, root.text  # the control: the source is what was refused
    for name in ("tiny-copy", "tiny-copy2", "tiny-copy3", "tiny-root"):
        scoped.post("/api/delete", {"model": name}, scoped.admin, method="DELETE")


def test_files_must_be_blobs_uploaded_through_the_gateway(scoped):
    data = b"GGUF" + b"\0" * 60
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    body = {"model": "tiny-upload", "files": {"model.gguf": digest}, "stream": False}
    refused = scoped.post("/api/create", body, scoped.manager)
    assert refused.status_code == 403 and "uploaded through this gateway" in refused.text
    uploaded = scoped.post(f"/api/blobs/{digest}", data, scoped.manager)
    assert uploaded.status_code == 201, uploaded.text
    made = scoped.post("/api/create", body, scoped.manager)
    assert made.status_code == 200, made.text
    scoped.post("/api/delete", {"model": "tiny-upload"}, scoped.admin, method="DELETE")


# A modelfile line, in the spellings a parser might accept: every one must be read as naming
# `secret:7b` (refused), or as unreadable (400); never as harmless.
_COMMANDS = st.sampled_from(["FROM", "from", "From", "ADAPTER", "adapter", "aDaPtEr"])
_SPACE = st.sampled_from([" ", "\t", "  ", " \t "])
_NAME = st.sampled_from(["secret:7b", '"secret:7b"', "secret", "SECRET:7b",
                         "registry.ollama.ai/library/secret:7b", "tiny/../secret:7b"])
_BREAK = st.sampled_from(["\n", "\r\n", "\r", "\n\n", "\u2028", "\x0b", "\x85"])
_OTHER = st.sampled_from(["SYSTEM hello", "# a comment", "PARAMETER temperature 0.2",
                          'TEMPLATE """{{ .Prompt }}"""', "FROM tiny:1b", ""])


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(before=st.lists(_OTHER, max_size=3), command=_COMMANDS, lead=st.sampled_from(
    ["", " ", "\t"]), space=_SPACE, name=_NAME, after=st.lists(_OTHER, max_size=3),
    breaks=_BREAK)
def test_no_spelling_of_a_modelfile_line_smuggles_a_hidden_model(scoped, before, command, lead,
                                                                   space, name, after, breaks):
    lines = [*before, f"{lead}{command}{space}{name}", *after]
    modelfile = breaks.join(lines)
    held = scoped.models()
    reply = scoped.post("/api/create", {"model": "tiny-stolen", "modelfile": modelfile,
                                        "stream": False}, scoped.manager)
    assert reply.status_code in (400, 403), (modelfile, reply.text)
    assert scoped.models() == held
    assert "error" in json.loads(reply.text)
