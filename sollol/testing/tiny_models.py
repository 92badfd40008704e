"""Real llama-architecture GGUF files with seeded random weights, from ~2 MB to 7B-shaped.

The files load and generate in llama-server (the text is noise: the weights are random). The
same arguments give the same bytes. Tensors are generated and written in row blocks, one at a
time, so a multi-GB model needs well under a GB of memory.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import attrs
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter, LlamaFileType

from sollol.testing.tiny_vocab import Vocab, build_vocab

DType = Literal["f32", "f16", "q8_0", "q4_0"]
_BLOCK_ELEMENTS = 1 << 22
"""Elements generated per step: bounds memory whatever the tensor's size."""
_WEIGHT_SCALE = 0.05
_QUANT_STEP = {GGMLQuantizationType.Q4_0: _WEIGHT_SCALE / 8,  # quants -8..7 times the step
               GGMLQuantizationType.Q8_0: _WEIGHT_SCALE / 128}  # quants -128..127
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_FILE_TYPES = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16,
               "q8_0": LlamaFileType.MOSTLY_Q8_0, "q4_0": LlamaFileType.MOSTLY_Q4_0}
_MATRIX_TYPES = {"f32": GGMLQuantizationType.F32, "f16": GGMLQuantizationType.F16,
                 "q8_0": GGMLQuantizationType.Q8_0, "q4_0": GGMLQuantizationType.Q4_0}


def _default_heads(dim: int) -> int:
    return dim // 64 if dim >= 128 else max(1, dim // 16)


@attrs.frozen
class TinyModelSpec:
    """The shape of a generated model; `parameter_count` is what its tensors hold."""

    layers: int = 8
    dim: int = 64
    heads: int | None = None
    kv_heads: int | None = None
    ff: int | None = None
    vocab_size: int | None = None
    """None: just the built-in tokenizer's tokens; larger pads with filler tokens."""
    context: int = 2048
    dtype: DType = "f16"
    seed: int = 0
    name: str = "tiny-llama"

    @property
    def n_heads(self) -> int:
        return self.heads or _default_heads(self.dim)

    @property
    def n_kv_heads(self) -> int:
        return self.kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def n_ff(self) -> int:
        return self.ff or 32 * math.ceil(self.dim * 8 / 3 / 32)

    @property
    def n_vocab(self) -> int:
        return len(self.vocab().tokens)

    def vocab(self) -> Vocab:
        return build_vocab(self.vocab_size)

    @property
    def parameter_count(self) -> int:
        return sum(math.prod(shape) for _name, shape, _kind in self.tensors())

    def check(self) -> None:
        """Raise ValueError for a shape llama.cpp or the chosen type cannot hold."""
        if self.layers < 1 or self.dim < 1:
            raise ValueError("layers and dim must be at least 1")
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(f"dim {self.dim} must divide into {self.n_heads} heads, and heads "
                             f"into {self.n_kv_heads} KV heads")
        if self.head_dim % 2:
            raise ValueError(f"the head size ({self.head_dim}) must be even (rotary embedding)")
        if self.dtype not in _FILE_TYPES:
            raise ValueError(f"dtype {self.dtype!r}: expected one of {', '.join(_FILE_TYPES)}")
        if self.dtype.startswith("q") and (self.dim % 32 or self.n_ff % 32):
            raise ValueError(f"{self.dtype} needs dim and ff divisible by 32")

    def tensors(self) -> Iterator[tuple[str, tuple[int, ...], GGMLQuantizationType]]:
        """(name, numpy shape (rows, columns), storage type) for every tensor, in file order."""
        matrix = _MATRIX_TYPES[self.dtype]
        # llama.cpp's own quantizer keeps the output layer at higher precision.
        output = GGMLQuantizationType.Q8_0 if self.dtype == "q4_0" else matrix
        norm = GGMLQuantizationType.F32  # llama.cpp requires f32 norms
        kv = self.n_kv_heads * self.head_dim
        yield "token_embd.weight", (self.n_vocab, self.dim), matrix
        for i in range(self.layers):
            yield f"blk.{i}.attn_norm.weight", (self.dim,), norm
            yield f"blk.{i}.attn_q.weight", (self.dim, self.dim), matrix
            yield f"blk.{i}.attn_k.weight", (kv, self.dim), matrix
            yield f"blk.{i}.attn_v.weight", (kv, self.dim), matrix
            yield f"blk.{i}.attn_output.weight", (self.dim, self.dim), matrix
            yield f"blk.{i}.ffn_norm.weight", (self.dim,), norm
            yield f"blk.{i}.ffn_gate.weight", (self.n_ff, self.dim), matrix
            yield f"blk.{i}.ffn_up.weight", (self.n_ff, self.dim), matrix
            yield f"blk.{i}.ffn_down.weight", (self.dim, self.n_ff), matrix
        yield "output_norm.weight", (self.dim,), norm
        yield "output.weight", (self.n_vocab, self.dim), output


PRESETS: dict[str, TinyModelSpec] = {
    "tiny": TinyModelSpec(),  # ~2 MB: unit tests
    "small": TinyModelSpec(layers=12, dim=256, name="small-llama"),  # ~20 MB
    "medium": TinyModelSpec(layers=16, dim=1024, ff=2816, name="medium-llama"),  # ~400 MB
    # ~410 MB with 23 MB feed-forward tensors: rpc-server's cache only takes tensors > 10 MiB
    "wide": TinyModelSpec(layers=4, dim=2048, ff=5632, name="wide-llama"),
    "7b-q4_0": TinyModelSpec(layers=32, dim=4096, heads=32, ff=11008, vocab_size=32000,
                             context=4096, dtype="q4_0", name="llama-7b-shaped"),  # ~3.6 GiB
}


def make_tiny_model(
    path: os.PathLike[str] | str, *, spec: TinyModelSpec | None = None, **shape: object,
) -> Path:
    """Write a model to `path` (atomically) and return the path.

    Pass a `spec`, or its fields as keywords: `make_tiny_model(p, layers=4, dim=128, seed=1)`.
    """
    if spec is None:
        spec = TinyModelSpec(**shape)  # type: ignore[arg-type]
    elif shape:
        spec = attrs.evolve(spec, **shape)
    spec.check()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        _write(spec, partial)
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return target


def make_preset(path: os.PathLike[str] | str, preset: str, **changes: object) -> Path:
    """Write one of PRESETS, with optional field changes."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: expected one of {', '.join(PRESETS)}")
    return make_tiny_model(path, spec=attrs.evolve(PRESETS[preset], **changes))


def _write(spec: TinyModelSpec, path: Path) -> None:
    writer = GGUFWriter(path, "llama")
    _add_metadata(writer, spec)
    tensors = list(spec.tensors())
    for name, shape, kind in tensors:
        nbytes = _nbytes(shape, kind)
        # raw_dtype names the stored type; the numpy dtype only has to be other than uint8
        # (which the writer would take as a byte shape). The writer reverses dims for GGUF.
        writer.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    assert writer.fout is not None
    out = writer.fout[0]
    for index, (_name, shape, kind) in enumerate(tensors):
        writer.write_padding(out, out.tell())
        rng = np.random.default_rng([spec.seed, index])
        for block in _blocks(rng, shape, kind):
            out.write(block.tobytes())
        writer.write_padding(out, _nbytes(shape, kind))
    writer.close()


def _add_metadata(writer: GGUFWriter, spec: TinyModelSpec) -> None:
    vocab = spec.vocab()
    writer.add_name(spec.name)
    writer.add_file_type(_FILE_TYPES[spec.dtype])
    writer.add_quantization_version(2)
    writer.add_context_length(spec.context)
    writer.add_embedding_length(spec.dim)
    writer.add_block_count(spec.layers)
    writer.add_feed_forward_length(spec.n_ff)
    writer.add_head_count(spec.n_heads)
    writer.add_head_count_kv(spec.n_kv_heads)
    writer.add_rope_dimension_count(spec.head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(vocab.tokens))
    writer.add_tokenizer_model("llama")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    writer.add_bos_token_id(vocab.bos)
    writer.add_eos_token_id(vocab.eos)
    writer.add_unk_token_id(vocab.unk)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)


def _nbytes(shape: tuple[int, ...], kind: GGMLQuantizationType) -> int:
    block, size = GGML_QUANT_SIZES[kind]
    return math.prod(shape) // block * size


def _blocks(
    rng: np.random.Generator, shape: tuple[int, ...], kind: GGMLQuantizationType,
) -> Iterator[np.ndarray]:
    """The tensor's stored bytes, a block of rows at a time."""
    if len(shape) == 1:  # norm weights: around 1, as a trained model's are
        yield (1.0 + (rng.random(shape, dtype=np.float32) - 0.5) * 0.1).astype(np.float32)
        return
    rows, columns = shape
    step = max(1, _BLOCK_ELEMENTS // columns)
    for start in range(0, rows, step):
        count = min(step, rows - start)
        if kind in _QUANT_STEP:
            yield _random_quantized(rng, count * columns, kind)
            continue
        values = (rng.random((count, columns), dtype=np.float32) - 0.5) * (2 * _WEIGHT_SCALE)
        yield values if kind == GGMLQuantizationType.F32 else values.astype(np.float16)


def _random_quantized(rng: np.random.Generator, elements: int,
                      kind: GGMLQuantizationType) -> np.ndarray:
    """Random quantized blocks made directly: a fixed f16 scale, then random quants.

    Ten times faster than quantizing random floats, which matters for the 7B shape; the values
    are uniform over the same range.
    """
    block, size = GGML_QUANT_SIZES[kind]
    blocks = rng.integers(0, 256, size=(elements // block, size), dtype=np.uint8)
    blocks[:, :2] = np.array([_QUANT_STEP[kind]], dtype=np.float16).view(np.uint8)
    return blocks
