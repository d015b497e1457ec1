"""Hugging Face tokenizers (the `tokenizers` library, never `transformers`) as processors.

`HFTokenizer` wraps a `tokenizers.Tokenizer` with the special tokens of the model family
it came from: an encoder (BERT, RoBERTa, XLM-R: cls/sep/pad/unk, optional mask) or a
causal LM (GPT-2, Llama, Mistral, Qwen2: eos, optional bos/pad/unk). It is stored in
checkpoints as its `tokenizer.json` under the processor kind "hf_tokenizer".
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from tokenizers import AddedToken, Tokenizer

from transformer_jax.data.processors import register_processor

ENCODER_TYPES = ("bert", "roberta", "xlm-roberta")
CAUSAL_TYPES = ("gpt2", "llama", "mistral", "qwen2")
MODEL_TYPES = ENCODER_TYPES + CAUSAL_TYPES


def token_str(value: Any) -> str | None:
    """A special token's text from tokenizer_config.json (a string or a serialized
    AddedToken); None otherwise."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def add_specials(tok: Tokenizer, tok_cfg: dict[str, Any], specials: dict[str, str]) -> None:
    """Registers the special tokens (and tokenizer_config.json's added tokens) so that
    their text in an input maps to their id."""
    added = tok_cfg.get("added_tokens_decoder") or {}
    listed = set()
    for key, t in sorted(added.items(), key=lambda kv: int(kv[0])):
        if not isinstance(t, dict) or "content" not in t:
            continue
        token = AddedToken(
            t["content"],
            single_word=t.get("single_word", False),
            lstrip=t.get("lstrip", False),
            rstrip=t.get("rstrip", False),
            normalized=t.get("normalized", not t.get("special", False)),
            special=t.get("special", False),
        )
        (tok.add_special_tokens if t.get("special") else tok.add_tokens)([token])
        if tok.token_to_id(t["content"]) != int(key):
            raise ValueError(
                f"tokenizer_config.json puts {t['content']!r} at id {key}, "
                f"the vocabulary at {tok.token_to_id(t['content'])}"
            )
        listed.add(t["content"])
    rest = [v for v in dict.fromkeys(specials.values()) if v not in listed]
    missing = [v for v in rest if tok.token_to_id(v) is None]
    if missing:
        raise ValueError(f"the tokenizer's vocabulary lacks the special token(s) {missing}")
    tok.add_special_tokens([AddedToken(v, normalized=False, special=True) for v in rest])


class HFTokenizer:
    """A `tokenizers.Tokenizer` with the special tokens of its model family.

    `encode(text)` gives the ids without special tokens. An encoder's input is
    `[cls_id] + ids + [sep_id]` (as transformers writes it); a causal LM's document is
    `[bos_id] + ids + [eos_id]`. Ids a family lacks (a causal LM's pad, cls, sep,
    mask; an absent bos or unk) are -1.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        model_type: str,
        specials: dict[str, str],
        options: dict[str, Any] | None = None,
    ) -> None:
        if model_type not in MODEL_TYPES:
            raise ValueError(f"tokenizer model_type={model_type!r}: choose one of {MODEL_TYPES}")
        self._tok = tokenizer
        self._tok.no_truncation()
        self._tok.no_padding()
        self.model_type = model_type
        self.specials = {k: v for k, v in specials.items() if v is not None}
        self.options = dict(options or {})
        required = (
            ("cls_token", "sep_token", "pad_token", "unk_token")
            if model_type in ENCODER_TYPES
            else ("eos_token",)
        )
        ids = {}
        for role in ("cls_token", "sep_token", "pad_token", "unk_token", "mask_token"):
            ids[role] = self._id_of(role, required=role in required)
        for role in ("bos_token", "eos_token"):
            ids[role] = self._id_of(role, required=role in required)
        self.pad_id, self.unk_id, self.mask_id = (
            ids["pad_token"],
            ids["unk_token"],
            ids["mask_token"],
        )
        if model_type in ENCODER_TYPES:
            self.cls_id, self.sep_id = ids["cls_token"], ids["sep_token"]
            self.bos_id, self.eos_id = self.cls_id, self.sep_id
        else:
            self.cls_id, self.sep_id = -1, -1
            self.bos_id, self.eos_id = ids["bos_token"], ids["eos_token"]
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        blob = json.loads(self._tok.to_str())
        added = blob.get("added_tokens", [])
        self._special_ids = {t["id"] for t in added if t.get("special", False)}
        self._special_ids |= {self.cls_id, self.sep_id, self.pad_id, self.mask_id} - {-1}
        self._special_ids |= {self.bos_id, self.eos_id} - {-1}
        self._special_ids.discard(self.unk_id)  # an unknown piece belongs to its word
        model = blob.get("model", {})
        pre = json.dumps(blob.get("pre_tokenizer"))
        if model.get("type") == "WordPiece":
            self._marker, self._starts = model.get("continuing_subword_prefix", "##"), False
        elif model.get("type") == "BPE" and '"ByteLevel"' in pre:
            self._marker, self._starts = "\u0120", True
        else:
            self._marker, self._starts = "\u2581", True

    def _id_of(self, role: str, *, required: bool) -> int:
        token = self.specials.get(role)
        i = None if token is None else self._tok.token_to_id(token)
        if i is None:
            if required:
                raise ValueError(f"tokenizer has no {role} {token!r} in its vocabulary")
            return -1
        return i

    @property
    def backend(self) -> Tokenizer:
        """The `tokenizers.Tokenizer` itself."""
        return self._tok

    def encode(self, text: str) -> list[int]:
        """Ids of `text`, without special tokens."""
        if not isinstance(text, str):
            raise ValueError(f"Tokenizer input must be str, got {type(text).__name__}.")
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of `ids`, special tokens skipped."""
        ids = [int(i) for i in np.asarray(ids, np.int64).reshape(-1) if 0 <= i < self.vocab_size]
        return self._tok.decode(ids, skip_special_tokens=True)

    def id_to_piece(self, i: int) -> str:
        return self._tok.id_to_token(int(i)) or self.specials.get("unk_token", "")

    def piece_to_id(self, piece: str) -> int:
        i = self._tok.token_to_id(piece)
        return self.unk_id if i is None else i

    def word_starts(self, ids: Sequence[int]) -> list[bool]:
        """True where a new word begins: WordPiece pieces without "##"; byte-level BPE's
        "Ġ" and SentencePiece's "▁" pieces, and any piece after a special token."""
        out, after_special = [], True
        for i in np.asarray(ids, np.int64).reshape(-1).tolist():
            if i in self._special_ids:
                out.append(True)
                after_special = True
                continue
            piece = self._tok.id_to_token(i) or ""
            if self._starts:
                out.append(after_special or piece.startswith(self._marker))
            else:
                out.append(not piece.startswith(self._marker))
            after_special = False
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "model_type": self.model_type,
            "specials": self.specials,
            "options": self.options,
            "tokenizer": json.loads(self._tok.to_str()),
        }

    @classmethod
    def from_json(cls, blob: dict[str, Any]) -> HFTokenizer:
        try:
            tok = Tokenizer.from_str(json.dumps(blob["tokenizer"]))
        except Exception as e:  # a missing key, or the library's own error
            raise ValueError(f"hf_tokenizer blob: cannot read its tokenizer ({e})") from None
        return cls(
            tok,
            model_type=blob.get("model_type", "bert"),
            specials=blob.get("specials", {}),
            options=blob.get("options"),
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HFTokenizer) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash((self.model_type, self.vocab_size, self.bos_id, self.eos_id))

    def __repr__(self) -> str:
        return f"HFTokenizer({self.model_type}, vocab_size={self.vocab_size})"


register_processor("hf_tokenizer", HFTokenizer, HFTokenizer.to_json, HFTokenizer.from_json)
