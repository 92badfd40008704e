"""Model names named by clients: one canonical form per model, a length limit, and GGUF files
only from the folders the operator listed (`gguf_dirs`), never an arbitrary path."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sollol.config import Config
from sollol.core.defaults import sollol_resolve_gguf
from sollol.core.names import (
    MAX_MODEL_NAME,
    canonical,
    canonical_model,
    check_model_name,
    spellings,
)
from sollol.errors import RequestError
from sollol.models import RouteRequest
from sollol.testing.static_route import StaticRoute, Upstream
from sollol.testing.tiny_models import make_tiny_model


@pytest.mark.parametrize("spelling", [
    "llama3", "llama3:latest", "library/llama3", "library/llama3:latest",
    "registry.ollama.ai/library/llama3", "Registry.Ollama.AI/library/llama3:latest",
    "REGISTRY.OLLAMA.AI/Library/llama3", " llama3 ",
])
def test_every_spelling_of_one_model_has_one_canonical_name(spelling):
    assert canonical_model(spelling) == "llama3"
    assert canonical(spelling) == "llama3:latest"
    assert RouteRequest(model=spelling).key == "llama3"


@pytest.mark.parametrize(("name", "canonical"), [
    ("llama3:8b", "llama3:8b"),
    ("someone/model:latest", "someone/model"),
    ("HF.co/Org/Model-GGUF:Q4_K_M", "hf.co/Org/Model-GGUF:Q4_K_M"),
    ("LocalHost:5000/m:latest", "localhost:5000/m"),
    ("meta-llama/Llama-3-8B", "meta-llama/Llama-3-8B"),
    ("m@sha256:abcd", "m@sha256:abcd"),
    ("tiny.gguf", "tiny.gguf"),
    ("/models/./a/../tiny.gguf", "/models/tiny.gguf"),
])
def test_canonical_names_keep_what_distinguishes_models(name, canonical):
    assert canonical_model(name) == canonical


_PARTS = st.sampled_from(["a", "B", "/", ":", ".", "@", " ", ":latest", "library/", "Library/",
                          "registry.ollama.ai/", "hf.co/", ".gguf", "..", "./", "~"])


@given(st.one_of(st.text(min_size=1, max_size=60),
                 st.lists(_PARTS, min_size=1, max_size=12).map("".join))
       .filter(lambda t: t.strip()))
def test_canonical_form_is_stable_and_a_spelling(name):
    once = canonical_model(name)
    assert canonical_model(once) == once and canonical_model(canonical(name)) == once
    assert once in spellings(name) and canonical(name) in spellings(name)


def test_names_past_the_limit_or_with_control_characters_are_refused():
    check_model_name("m" * MAX_MODEL_NAME)
    with pytest.raises(RequestError, match="at most 512"):
        RouteRequest(model="m" * (MAX_MODEL_NAME + 1))
    with pytest.raises(RequestError, match="control characters"):
        check_model_name("llama3\n:latest")


def test_a_request_keeps_the_name_the_client_wrote():
    request = RouteRequest(model="library/llama3")
    assert request.model == "library/llama3" and request.key == "llama3"


def test_the_gateway_refuses_a_huge_model_name_with_a_short_400(scripted_node, gateway):
    node = scripted_node(api="ollama")
    gw = gateway([StaticRoute("pool", [Upstream("n", node.url, "ollama", ("m",))])])
    huge = "x" * (2 * 1024 * 1024)
    for path, body in [("/api/chat", {"model": huge, "messages": []}),
                       ("/v1/chat/completions", {"model": huge, "messages": []}),
                       ("/api/show", {"model": huge})]:
        reply = httpx.post(gw.url + path, json=body, timeout=60)
        assert reply.status_code == 400, (path, reply.text[:200])
        assert len(reply.content) < 1000 and "at most 512" in reply.text
    reply = httpx.get(gw.url + "/sollol/route", params={"model": huge[:10_000]}, timeout=60)
    assert reply.status_code == 400 and len(reply.content) < 1000
    assert not node.requests


# ------------------------------------------------------------------------- gguf_dirs


@pytest.fixture
def folders(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    make_tiny_model(models / "tiny.gguf")
    outside = tmp_path / "outside"
    outside.mkdir()
    make_tiny_model(outside / "secret.gguf")
    (models / "escape.gguf").symlink_to(outside / "secret.gguf")
    (models / "inside-link.gguf").symlink_to(models / "tiny.gguf")
    (models / "notes.gguf").write_text("not a gguf file")
    return models, outside


def resolve(name: str, *dirs: Path):
    return sollol_resolve_gguf(model=name, config=Config(values={
        "gguf_dirs": [str(d) for d in dirs]}))


@pytest.mark.parametrize("name", ["tiny", "tiny:latest", "tiny.gguf", "inside-link",
                                  "{models}/tiny.gguf", "{models}/../models/tiny.gguf"])
def test_files_in_a_listed_folder_resolve_by_name_or_inner_path(folders, name):
    models, _outside = folders
    found = resolve(name.format(models=models), models)
    assert found is not None and found.path == (models / "tiny.gguf").resolve()


@pytest.mark.parametrize("name", [
    "/etc/passwd", "/etc/hostname", "{outside}/secret.gguf", "secret", "../outside/secret.gguf",
    "{models}/../outside/secret.gguf", "escape", "escape.gguf", "{models}/escape.gguf",
    "notes", "..", ".", "", "tiny:v2", "tiny\x00.gguf", "~/tiny.gguf", "{models}",
])
def test_nothing_outside_the_listed_folders_resolves(folders, name):
    models, outside = folders
    assert resolve(name.format(models=models, outside=outside), models) is None


def test_without_listed_folders_no_path_resolves(folders):
    models, _outside = folders
    assert resolve(str(models / "tiny.gguf")) is None
    assert resolve("tiny") is None


def test_the_gateway_does_not_read_an_arbitrary_file_for_a_client(folders, gateway,
                                                                  scripted_node, monkeypatch):
    monkeypatch.delenv("SOLLOL_GGUF_DIRS")
    models, outside = folders
    node = scripted_node(api="ollama")
    gw = gateway([StaticRoute("pool", [Upstream("n", node.url, "ollama", ("m",))])],
                 gguf_dirs=[str(models)])
    for name in (str(outside / "secret.gguf"), "/etc/passwd", str(models / "escape.gguf")):
        reply = httpx.post(gw.url + "/api/show", json={"model": name}, timeout=60)
        assert reply.status_code == 404, (name, reply.text)
        assert os.path.basename(name) in reply.json()["error"]
    assert not node.requests


def test_one_coordinator_log_per_model_whatever_the_spelling():
    from sollol_plugins.llamacpp_rpc.options import slug

    assert slug("llama3") == slug("llama3:latest") == slug("library/llama3")
    assert slug("llama3") != slug("llama3:8b")
