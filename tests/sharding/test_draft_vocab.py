"""The draft model's vocabulary check (plugins/llamacpp_rpc/draft.py) on real GGUF headers: every
way two tokenizers can differ is named, and the same tokenizer passes whatever the weights."""

from __future__ import annotations

from pathlib import Path

from gguf import GGUFWriter
from sollol_plugins.llamacpp_rpc.draft import mismatch

from sollol.testing.tiny_models import make_tiny_model

TOKENS = ["<unk>", "<s>", "</s>", "shard", "layer", "token"]


def header(path: Path, tokens: list[str] | None, *, bos: int = 1, model: str = "llama") -> Path:
    """A GGUF file holding only a tokenizer (no tensors): all the check reads."""
    writer = GGUFWriter(str(path), "llama")
    if tokens is not None:
        writer.add_tokenizer_model(model)
        writer.add_token_list(tokens)
        writer.add_bos_token_id(bos)
        writer.add_eos_token_id(2)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    return path


def test_the_same_tokenizer_passes_whatever_the_weights(tmp_path: Path) -> None:
    target = make_tiny_model(tmp_path / "target.gguf", layers=2, dim=64, seed=1)
    draft = make_tiny_model(tmp_path / "draft.gguf", layers=1, dim=32, seed=2)
    assert mismatch(target, draft) == ""


def test_a_different_token_count_is_named(tmp_path: Path) -> None:
    target = make_tiny_model(tmp_path / "target.gguf", layers=1, dim=32)
    draft = make_tiny_model(tmp_path / "draft.gguf", layers=1, dim=32, vocab_size=1300)
    assert mismatch(target, draft) == "the target has 1192 tokens, the draft 1300"


def test_same_count_other_token_texts_are_named(tmp_path: Path) -> None:
    target = header(tmp_path / "target.gguf", TOKENS)
    draft = header(tmp_path / "draft.gguf", [*TOKENS[:-1], "other"])
    assert mismatch(target, draft) == "the 6 token texts differ"


def test_special_token_ids_and_the_tokenizer_model_are_compared(tmp_path: Path) -> None:
    target = header(tmp_path / "target.gguf", TOKENS)
    assert mismatch(target, header(tmp_path / "bos.gguf", TOKENS, bos=3)) == \
        "tokenizer.ggml.bos_token_id differs: 1 vs 3"
    assert mismatch(target, header(tmp_path / "gpt2.gguf", TOKENS, model="gpt2")) == \
        "tokenizer.ggml.model differs: 'llama' vs 'gpt2'"


def test_a_draft_without_a_tokenizer_or_file_is_refused(tmp_path: Path) -> None:
    target = header(tmp_path / "target.gguf", TOKENS)
    bare = header(tmp_path / "bare.gguf", None)
    assert mismatch(target, bare) == \
        f"cannot read a tokenizer: {bare} has no tokenizer (tokenizer.ggml.tokens)"
    assert mismatch(target, tmp_path / "missing.gguf").startswith("cannot read a tokenizer: ")
