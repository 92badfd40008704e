"""A self-contained SentencePiece-style vocabulary for generated models (no download, no file).

Token ids: 0 `<unk>`, 1 `<s>`, 2 `</s>`, then the 256 byte-fallback tokens `<0x00>`..`<0xFF>`,
then printable ASCII characters, then English words with every prefix, so llama.cpp's SPM
tokenizer can merge text into words and falls back to bytes for anything else.
"""

from __future__ import annotations

import functools
import string

import attrs
from gguf import TokenType

SPACE = "\u2581"  # SentencePiece's marker for a word boundary
_WORD_TEXT = (
    "the of and to in is was for that on with as by at from it this be are or an his her "
    "which not have has had one all their there been were when who will more no if out so "
    "what up about into than them can only other new some could time these two may then do "
    "first any my now such like our over man me even most made after also did many before "
    "must through back years where much your way well down should because each just those "
    "people how too little state good very make world still own see men work long get here "
    "between both life being under never day same another know while last might us great "
    "old year off come since against go came right used take three hello cluster model node "
    "llama server shard token request route pool memory layer weight random tiny test once "
    "upon a i you we they he she said story king queen house water light night sun moon"
)
WORDS = tuple(_WORD_TEXT.split())


@attrs.frozen
class Vocab:
    """Tokens with their scores and types, and the special token ids."""

    tokens: tuple[str, ...]
    scores: tuple[float, ...]
    types: tuple[int, ...]
    unk: int = 0
    bos: int = 1
    eos: int = 2


@functools.cache
def build_vocab(size: int | None = None) -> Vocab:
    """The vocabulary; `size` above the built-in count pads it with filler words `w<id>`."""
    tokens = ["<unk>", "<s>", "</s>"]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    scores = [0.0, 0.0, 0.0]
    for byte in range(256):
        tokens.append(f"<0x{byte:02X}>")
        types.append(TokenType.BYTE)
        scores.append(0.0)
    seen = set(tokens)
    pieces = [SPACE, *(c for c in string.printable if c.isprintable() and c != " ")]
    for word in WORDS:
        pieces += [SPACE + word[:end] for end in range(1, len(word) + 1)]
        pieces += [word[:end] for end in range(2, len(word) + 1)]
    for piece in pieces:
        if piece in seen:
            continue
        seen.add(piece)
        tokens.append(piece)
        types.append(TokenType.NORMAL)
        # SPM merges the highest-scoring pair first: longer pieces win, so words form whole.
        scores.append(float(len(piece)) - len(tokens) * 1e-6)
    if size is not None:
        if size < len(tokens):
            raise ValueError(f"vocab_size {size} is below the built-in {len(tokens)} tokens")
        for index in range(len(tokens), size):
            # Normal tokens that print as text, so a big model's random output is visible.
            tokens.append(f"{SPACE}w{index}")
            types.append(TokenType.NORMAL)
            scores.append(-float(index))
    return Vocab(tuple(tokens), tuple(scores), tuple(int(t) for t in types))
