"""Text in, ids out for the encoder: special tokens, truncation, word starts; the label map.

A classification tokenizer is any registered processor with `encode(text)` (ids without
special tokens), `decode(ids)`, `vocab_size`, `pad_id` and either `cls_id`, `sep_id`,
`mask_id` (an imported Hugging Face tokenizer) or `bos_id`, `eos_id` and a "<mask>"
piece (a SentencePiece model trained here: <s> text </s>, as RoBERTa writes it).
An input is `[CLS] text [SEP]`, its text cut to `max_length - 2` tokens.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from transformer_jax.data.processors import register_processor

MASK_PIECE = "<mask>"


@dataclasses.dataclass(frozen=True)
class Specials:
    cls_id: int
    sep_id: int
    pad_id: int
    mask_id: int  # -1: the tokenizer has none (no masked-LM)


def specials(tok) -> Specials:
    if hasattr(tok, "cls_id"):
        return Specials(tok.cls_id, tok.sep_id, tok.pad_id, getattr(tok, "mask_id", -1))
    mask = -1
    if hasattr(tok, "piece_to_id"):
        i = tok.piece_to_id(MASK_PIECE)
        if i != getattr(tok, "unk_id", -1):
            mask = i
    return Specials(tok.bos_id, tok.eos_id, tok.pad_id, mask)


def encode_input(tok, text: str, max_length: int) -> tuple[np.ndarray, bool]:
    """(int32 ids `[CLS] text [SEP]`, whether the text was truncated)."""
    s = specials(tok)
    ids = tok.encode(text)
    cut = len(ids) > max_length - 2
    return np.asarray([s.cls_id, *ids[: max_length - 2], s.sep_id], np.int32), cut


def word_starts(tok, ids: Sequence[int]) -> np.ndarray:
    """Bool per id: True where a new word begins (whole-word masking). Tokenizers with
    a `word_starts` method answer themselves; SentencePiece pieces start a word with "▁"."""
    if hasattr(tok, "word_starts"):
        return np.asarray(tok.word_starts(ids), bool)
    return np.asarray([tok.id_to_piece(int(i)).startswith("\u2581") for i in ids], bool)


def warn_truncated(count: int, max_length: int) -> None:
    if count:
        print(
            f"warning: {count} input(s) longer than {max_length} tokens were truncated to "
            f"{max_length} (data.max_length)",
            file=sys.stderr,
        )


@dataclasses.dataclass(frozen=True)
class LabelMap:
    """The label names in the head's order, and what kind of problem they make."""

    names: tuple[str, ...]
    problem_type: str = "single_label"

    def __post_init__(self) -> None:
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"label names repeat: {list(self.names)}")

    @property
    def num_labels(self) -> int:
        return len(self.names) if self.names else 1  # regression: one value

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise ValueError(
                f"label {name!r} is not one of the configured labels {list(self.names)}"
            ) from None

    def to_json(self) -> dict[str, Any]:
        return {"names": list(self.names), "problem_type": self.problem_type}

    @classmethod
    def from_json(cls, blob: dict[str, Any]) -> LabelMap:
        return cls(tuple(blob["names"]), blob.get("problem_type", "single_label"))


register_processor("label_map", LabelMap, LabelMap.to_json, LabelMap.from_json)
