"""Special ids of a causal LM's tokenizer and how a document or prompt becomes ids."""

from __future__ import annotations

from typing import Any, NamedTuple

from transformer_jax.data.tokenizer import BOS_ID, EOS_ID, PAD_ID


class LMSpecials(NamedTuple):
    bos_id: int
    eos_id: int
    pad_id: int


def lm_specials(tokenizer: Any) -> LMSpecials:
    """(bos, eos, pad) of a tokenizer: its `bos_id`/`eos_id`/`pad_id` attributes, else
    SentencePiece's fixed ids. A tokenizer without a pad id pads with eos (padding is
    marked by segment id 0, never by the id itself)."""
    bos = getattr(tokenizer, "bos_id", BOS_ID)
    eos = getattr(tokenizer, "eos_id", EOS_ID)
    pad = getattr(tokenizer, "pad_id", PAD_ID)
    bos, eos, pad = (x() if callable(x) else x for x in (bos, eos, pad))
    if pad is None or pad < 0:
        pad = eos
    if bos is None or bos < 0:
        bos = eos
    return LMSpecials(int(bos), int(eos), int(pad))


def encode_document(tokenizer: Any, text: str) -> list[int]:
    """A training document: [bos] + ids + [eos]."""
    s = lm_specials(tokenizer)
    return [s.bos_id, *tokenizer.encode(text), s.eos_id]
