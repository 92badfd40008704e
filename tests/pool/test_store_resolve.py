"""Resolving model names to GGUF blobs in an Ollama-layout store built from generated models."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from sollol.cli import build_cli
from sollol.config import Config
from sollol.core.plugin_manager import SollolPluginManager
from sollol.errors import ModelFileError
from sollol.models import ResolvedModel
from sollol.testing.ollama_store import MODEL, PROJECTOR, OllamaStoreBuilder
from sollol.testing.tiny_models import make_tiny_model

CONFIG = Config(values={"ollama_models_dir": None})


def resolve(pm: SollolPluginManager, name: str, config: Config = CONFIG) -> ResolvedModel | None:
    return pm.hook.sollol_resolve_gguf(model=name, config=config)


@pytest.mark.parametrize("name", [
    "tiny", "tiny:latest", "library/tiny", "registry.ollama.ai/library/tiny:latest", "TINY",
    "someone/tiny:v1", "registry.ollama.ai/someone/tiny:v1",
    "hf.co/org/tiny-GGUF:F16", "hf.co/ORG/tiny-gguf:f16",
])
def test_every_name_form_resolves_to_the_weights_blob(
    pm: SollolPluginManager, ollama_store: OllamaStoreBuilder, tiny_model: Path, name: str,
) -> None:
    found = resolve(pm, name)
    assert found is not None
    assert found.name == name
    assert found.path.parent == ollama_store.root / "blobs"
    assert found.path.read_bytes() == tiny_model.read_bytes()
    assert found.size == tiny_model.stat().st_size
    assert found.digest == "sha256:" + found.path.name.removeprefix("sha256-")
    assert found.source.startswith("ollama:")


def test_names_the_store_does_not_hold_are_not_mine(
    pm: SollolPluginManager, ollama_store: OllamaStoreBuilder, tiny_model: Path,
) -> None:
    for name in ("tiny:v2", "other", "someone/else", "a/b/c/d", "../../etc/passwd", ""):
        assert resolve(pm, name) is None
    # A path is left to the core's default, which accepts a GGUF file inside `gguf_dirs` only.
    assert resolve(pm, str(tiny_model)) is None
    inside = Config(values={"ollama_models_dir": None, "gguf_dirs": [str(tiny_model.parent)]})
    found = resolve(pm, str(tiny_model), inside)
    assert found is not None and found.source == "path"


def test_projector_and_adapter_layers_are_reported(
    pm: SollolPluginManager, ollama_store: OllamaStoreBuilder, tmp_path: Path, tiny_model: Path,
) -> None:
    projector = make_tiny_model(tmp_path / "proj.gguf", layers=1, seed=1)
    adapter = make_tiny_model(tmp_path / "adapter.gguf", layers=1, seed=2)
    ollama_store.add_model("vision", tiny_model, projector=projector, adapter=adapter,
                           license_text="MIT")
    found = resolve(pm, "vision")
    assert found is not None
    assert [p.read_bytes() for p in found.projectors] == [projector.read_bytes()]
    assert [p.read_bytes() for p in found.adapters] == [adapter.read_bytes()]


def test_a_manifest_list_picks_this_machine_s_platform(
    pm: SollolPluginManager, ollama_store: OllamaStoreBuilder, tmp_path: Path,
) -> None:
    mine = make_tiny_model(tmp_path / "mine.gguf", layers=2, seed=3)
    other = make_tiny_model(tmp_path / "other.gguf", layers=2, seed=4)
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    foreign = "riscv64" if arch != "riscv64" else "amd64"
    ollama_store.add_manifest_list("multi:1b", {("linux", foreign): other,
                                                 ("linux", arch): mine})
    found = resolve(pm, "multi:1b")
    assert found is not None
    assert found.path.read_bytes() == mine.read_bytes()


@pytest.mark.parametrize(("manifest", "message"), [
    ("{not json", "corrupt manifest"),
    ("[1, 2]", "not a JSON object"),
    ({"schemaVersion": 2, "layers": "nope"}, "no list of layers"),
    ({"schemaVersion": 2, "layers": [{"mediaType": "application/vnd.ollama.image.template",
                                       "digest": "sha256:" + "0" * 64, "size": 1}]},
     "no application/vnd.ollama.image.model layer"),
    ({"schemaVersion": 2, "layers": [{"mediaType": MODEL, "digest": "sha256:../../../etc/passwd",
                                       "size": 1}]}, "refusing digest"),
    ({"schemaVersion": 2, "layers": [{"mediaType": MODEL, "digest": "sha256:" + "A" * 64,
                                       "size": 1}]}, "refusing digest"),
    ({"schemaVersion": 2, "layers": [{"mediaType": MODEL, "digest": "sha256:" + "1" * 64,
                                       "size": 1}]}, "which is missing"),
    ({"schemaVersion": 2, "manifests": []}, "lists no manifests"),
])
def test_broken_entries_are_clear_errors_not_silent_misses(
    pm: SollolPluginManager, ollama_store: OllamaStoreBuilder, manifest: object, message: str,
) -> None:
    ollama_store.write_manifest("broken:1", manifest)  # type: ignore[arg-type]
    with pytest.raises(ModelFileError, match=message):
        resolve(pm, "broken:1")


def test_a_traversal_digest_never_touches_a_file_outside_the_store(
    pm: SollolPluginManager, ollama_store: OllamaStoreBuilder, tmp_path: Path, tiny_model: Path,
) -> None:
    outside = tmp_path / "outside.gguf"
    outside.write_bytes(tiny_model.read_bytes())  # a valid GGUF the digest tries to reach
    digest = "sha256-../../outside.gguf"
    ollama_store.write_manifest("sneaky", {"schemaVersion": 2, "layers": [
        {"mediaType": MODEL, "digest": digest, "size": outside.stat().st_size}]})
    with pytest.raises(ModelFileError, match="refusing digest"):
        resolve(pm, "sneaky")
    ollama_store.write_manifest("sneaky", {"schemaVersion": 2, "layers": [
        {"mediaType": PROJECTOR, "digest": "sha256:/etc/passwd", "size": 1},
        {"mediaType": MODEL, "digest": "sha256:" + "2" * 64, "size": 1}]})
    with pytest.raises(ModelFileError):
        resolve(pm, "sneaky")


def test_a_blob_that_is_not_gguf_or_is_truncated_is_refused(
    pm: SollolPluginManager, ollama_store: OllamaStoreBuilder, tiny_model: Path,
) -> None:
    layer = ollama_store.blob_bytes(b"not a model at all", MODEL)
    ollama_store.write_manifest("text", ollama_store.manifest([layer]))
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        resolve(pm, "text")
    real = ollama_store.blob_file(tiny_model, MODEL)
    short = {**real.as_json(), "size": real.size + 1}
    ollama_store.write_manifest("short", {"schemaVersion": 2, "layers": [short]})
    with pytest.raises(ModelFileError, match="incomplete pull"):
        resolve(pm, "short")


def test_store_locations_config_then_ollama_models_then_home(
    pm: SollolPluginManager, ollama_store: OllamaStoreBuilder, tiny_model: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    elsewhere = OllamaStoreBuilder(tmp_path / "elsewhere")
    elsewhere.add_model("only-here", tiny_model)
    configured = Config(values={"ollama_models_dir": str(elsewhere.root)})
    assert resolve(pm, "only-here", configured) is not None
    assert resolve(pm, "tiny", configured) is None  # an explicit store is the only one searched
    assert resolve(pm, "only-here") is None  # OLLAMA_MODELS points at the fixture's store
    monkeypatch.delenv("OLLAMA_MODELS")
    home = tmp_path / "home"
    OllamaStoreBuilder(home / ".ollama" / "models").add_model("in-home", tiny_model)
    monkeypatch.setenv("HOME", str(home))
    assert resolve(pm, "in-home") is not None


def test_plugin_lists_the_store_s_names(
    pm: SollolPluginManager, ollama_store: OllamaStoreBuilder,
) -> None:
    names = {n for names in pm.hook.sollol_gguf_names(config=CONFIG) for n in names or ()}
    assert {"tiny:latest", "someone/tiny:v1", "hf.co/org/tiny-GGUF:F16"} <= names


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(build_cli(), list(args))
    return result.exit_code, result.output


def test_cli_resolve_prints_the_blob_and_its_metadata(ollama_store: OllamaStoreBuilder) -> None:
    code, output = run_cli("models", "resolve", "someone/tiny:v1", "--json", "--verify")
    assert code == 0, output
    data = json.loads(output)
    assert Path(data["path"]).parent == ollama_store.root / "blobs"
    assert data["verified"] is True
    assert data["info"]["layer_count"] == 8
    code, output = run_cli("models", "resolve", "tiny")
    assert code == 0 and "8 layers" in output


def test_cli_verify_catches_a_changed_blob(ollama_store: OllamaStoreBuilder,
                                           tmp_path: Path) -> None:
    changed = tmp_path / "changed.gguf"
    make_tiny_model(changed, layers=2, seed=9)
    layer = ollama_store.blob_file(changed, MODEL)
    ollama_store.write_manifest("changed", ollama_store.manifest([layer]))
    blob = ollama_store.root / "blobs" / layer.digest.replace(":", "-")
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.unlink()  # it is a hard link to the generated file: write a separate copy
    blob.write_bytes(bytes(data))
    code, output = run_cli("models", "resolve", "changed", "--verify")
    assert code == 1
    assert "corrupt" in output and layer.digest in output
    assert run_cli("models", "resolve", "changed")[0] == 0  # without --verify it still resolves


def test_cli_unknown_model_names_the_closest(ollama_store: OllamaStoreBuilder) -> None:
    code, output = run_cli("models", "resolve", "tinny")
    assert code == 1
    assert "'tinny' not found" in output and "tiny:latest" in output


def test_cli_corrupt_manifest_is_a_one_line_error(ollama_store: OllamaStoreBuilder) -> None:
    ollama_store.write_manifest("bad", "{")
    code, output = run_cli("models", "resolve", "bad")
    assert code == 1 and "corrupt manifest" in output
    assert "Traceback" not in output


def test_cli_models_list_shows_every_model(ollama_store: OllamaStoreBuilder,
                                           tiny_model: Path) -> None:
    ollama_store.write_manifest("bad", "{")
    code, output = run_cli("models", "list", "--json")
    assert code == 0, output
    rows = {row["name"]: row for row in json.loads(output)}
    assert rows["tiny:latest"]["layers"] == 8
    assert rows["hf.co/org/tiny-GGUF:F16"]["size"] == tiny_model.stat().st_size
    assert rows["someone/tiny:v1"]["parameters"] > 0
    assert "corrupt manifest" in rows["bad:latest"]["error"]
    code, output = run_cli("models", "list")
    assert code == 0 and "someone/tiny:v1" in output and "error:" in output


@pytest.mark.llamacpp
def test_a_real_llama_server_runs_a_resolved_blob(
    pm: SollolPluginManager, ollama_store: OllamaStoreBuilder, llama_server,
) -> None:
    found = resolve(pm, "hf.co/org/tiny-GGUF:F16")
    assert found is not None and found.path.suffix == ""  # a blob path, no .gguf extension
    url, _proc = llama_server(found.path)
    assert httpx.get(url + "/health", timeout=30).status_code == 200
    response = httpx.post(url + "/completion", timeout=120, json={
        "prompt": "once upon a time", "n_predict": 8, "temperature": 0})
    assert response.status_code == 200
    assert response.json()["tokens_predicted"] == 8
