"""Tokenizers as JSON, stored inside every checkpoint (never pickled)."""

from __future__ import annotations

import base64
from typing import Any


def tokenizers_to_json(src, tgt) -> dict[str, Any]:
    """{"kind": ..., ...}: one shared SentencePiece model, or a Marian pair."""
    from transformer_jax.data.tokenizer import SentencePieceTokenizer

    if isinstance(src, SentencePieceTokenizer) and src is tgt:
        return {"kind": "sentencepiece", "model": base64.b64encode(src.to_bytes()).decode()}
    bundle = getattr(src, "bundle", None)  # the pair both sides were loaded from
    if bundle is not None and bundle is getattr(tgt, "bundle", None):
        return bundle.to_json()
    if hasattr(src, "to_json"):
        return src.to_json()
    raise TypeError(f"cannot store tokenizers of type {type(src).__name__}/{type(tgt).__name__}")


def tokenizers_from_json(blob: dict[str, Any]):
    """(source tokenizer, target tokenizer)."""
    kind = blob.get("kind")
    if kind == "sentencepiece":
        from transformer_jax.data.tokenizer import SentencePieceTokenizer

        tok = SentencePieceTokenizer.from_bytes(base64.b64decode(blob["model"]))
        return tok, tok
    if kind == "marian":
        from transformer_jax.convert.marian import MarianTokenizer

        tok = MarianTokenizer.from_json(blob)
        tok.source.bundle = tok.target.bundle = tok
        return tok.source, tok.target
    raise ValueError(f"unknown tokenizer kind {kind!r} in checkpoint")
