"""GGUF metadata: what the reader finds matches what the tiny-model factory wrote."""

from __future__ import annotations

import hashlib
from pathlib import Path

import gguf
import pytest

from sollol.core.gguf_info import read_header, read_model_info
from sollol.errors import ModelFileError
from sollol.testing.tiny_models import PRESETS, TinyModelSpec, make_preset, make_tiny_model


@pytest.mark.parametrize(("dtype", "quantization"),
                         [("f32", "F32"), ("f16", "F16"), ("q8_0", "Q8_0"), ("q4_0", "Q4_0")])
def test_metadata_matches_what_the_factory_wrote(tmp_path: Path, dtype: str,
                                                  quantization: str) -> None:
    spec = TinyModelSpec(layers=3, dim=128, heads=4, kv_heads=2, context=4096, dtype=dtype)
    path = make_tiny_model(tmp_path / "m.gguf", spec=spec)
    info = read_model_info(path, "mine")
    assert info.name == "mine"
    assert info.architecture == "llama"
    assert info.layer_count == 3
    assert info.parameter_count == spec.parameter_count
    assert info.embedding_length == 128
    assert info.context_length == 4096
    assert info.quantization == quantization
    assert info.file_size == path.stat().st_size
    # 3 layers x 2 KV heads x (32 + 32) head dims x 2 bytes (f16 cache)
    assert info.kv_bytes_per_token == 3 * 2 * 64 * 2
    assert info.memory_estimate(1000) == info.file_size + 1000 * info.kv_bytes_per_token
    assert info.memory_estimate() == info.file_size + 4096 * info.kv_bytes_per_token


def test_parameter_count_is_the_sum_of_the_tensor_shapes(tmp_path: Path) -> None:
    spec = TinyModelSpec(layers=2, dim=64, ff=96)
    vocab = spec.n_vocab
    per_layer = 2 * 64 + 4 * 64 * 64 + 3 * 64 * 96  # norms, q/k/v/o, gate/up/down
    assert spec.parameter_count == 2 * vocab * 64 + 64 + 2 * per_layer


def test_the_reader_agrees_with_the_gguf_package(tmp_path: Path) -> None:
    path = make_tiny_model(tmp_path / "m.gguf", layers=2, dim=64, vocab_size=2000)
    reference = gguf.GGUFReader(path)
    header = read_header(path)
    assert [t.name for t in header.tensors] == [t.name for t in reference.tensors]
    assert [t.shape for t in header.tensors] == [tuple(int(d) for d in t.shape)
                                                 for t in reference.tensors]
    assert sum(t.elements for t in header.tensors) == sum(int(t.n_elements)
                                                          for t in reference.tensors)
    assert header.metadata["llama.block_count"] == 2
    assert header.metadata["tokenizer.ggml.tokens"].count == 2000  # long arrays are skipped


def test_the_same_seed_gives_the_same_bytes_and_another_seed_does_not(tmp_path: Path) -> None:
    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    first = make_tiny_model(tmp_path / "a.gguf", seed=7)
    again = make_tiny_model(tmp_path / "b.gguf", seed=7)
    other = make_tiny_model(tmp_path / "c.gguf", seed=8)
    assert digest(first) == digest(again)
    assert digest(first) != digest(other)


def test_presets_and_a_padded_vocabulary(tmp_path: Path) -> None:
    path = make_preset(tmp_path / "small.gguf", "small", layers=2, vocab_size=4096)
    info = read_model_info(path)
    assert info.layer_count == 2
    assert info.embedding_length == PRESETS["small"].dim
    assert read_header(path).metadata["tokenizer.ggml.tokens"].count == 4096
    with pytest.raises(ValueError, match="unknown preset"):
        make_preset(tmp_path / "x.gguf", "huge")


def test_shapes_llama_cpp_cannot_hold_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="divisible by 32"):
        make_tiny_model(tmp_path / "q.gguf", dim=48, heads=3, dtype="q4_0")
    with pytest.raises(ValueError, match="heads"):
        make_tiny_model(tmp_path / "h.gguf", dim=64, heads=5)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_a_file_that_is_not_gguf_is_a_clear_error(tmp_path: Path, tiny_model: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        read_model_info(text)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(tiny_model.read_bytes()[:3000])
    with pytest.raises(ModelFileError, match="malformed GGUF header"):
        read_model_info(truncated)
    with pytest.raises(ModelFileError, match="cannot read"):
        read_model_info(tmp_path / "missing.gguf")


def test_the_session_tiny_model_is_about_a_megabyte(tiny_model: Path) -> None:
    info = read_model_info(tiny_model)
    assert info.layer_count == TinyModelSpec().layers
    assert 500_000 < info.file_size < 3_000_000


def test_cli_make_tiny_writes_the_model_it_describes(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from sollol.cli import build_cli

    path = tmp_path / "cli.gguf"
    result = CliRunner().invoke(build_cli(), ["models", "make-tiny", str(path), "--layers", "3",
                                              "--dim", "128", "--dtype", "q8_0", "--seed", "5"])
    assert result.exit_code == 0, result.output
    info = read_model_info(path)
    assert (info.layer_count, info.embedding_length, info.quantization) == (3, 128, "Q8_0")
    assert f"{info.parameter_count} parameters" in result.output
    result = CliRunner().invoke(build_cli(), ["models", "make-tiny", str(tmp_path / "bad.gguf"),
                                              "--dim", "48", "--heads", "3", "--dtype", "q4_0"])
    assert result.exit_code == 2 and "divisible by 32" in result.output
