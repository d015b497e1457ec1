"""Tokenizer protocol and a SentencePiece implementation trained in memory."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import sentencepiece as spm

PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> integer ids."""

    pad_id: int
    eos_id: int
    bos_id: int
    unk_id: int
    vocab_size: int

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no bos/eos added)."""
        ...

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of ``ids``; stops at the first eos and skips pad/bos."""
        ...


def _check_text(text: object) -> str:
    if not isinstance(text, str):
        raise ValueError(f"Tokenizer input must be str, got {type(text).__name__}.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"Tokenizer input is not valid UTF-8 text: {e}.") from None
    return text


class SentencePieceTokenizer:
    """A :class:`Tokenizer` backed by a serialized SentencePiece model."""

    def __init__(self, model_bytes: bytes) -> None:
        if not isinstance(model_bytes, bytes | bytearray) or not model_bytes:
            raise ValueError("SentencePieceTokenizer needs non-empty serialized model bytes.")
        processor = spm.SentencePieceProcessor()
        try:
            processor.LoadFromSerializedProto(bytes(model_bytes))
        except (RuntimeError, OSError) as e:
            raise ValueError(f"Invalid SentencePiece model: {e}") from None
        self._model_bytes = bytes(model_bytes)
        self._sp = processor
        self.pad_id = processor.pad_id()
        self.eos_id = processor.eos_id()
        self.bos_id = processor.bos_id()
        self.unk_id = processor.unk_id()
        self.vocab_size = processor.get_piece_size()

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no bos/eos added)."""
        return list(self._sp.encode(_check_text(text), out_type=int))

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of ``ids``; stops at the first eos and skips pad/bos."""
        out: list[int] = []
        for i in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            if not 0 <= i < self.vocab_size:
                raise ValueError(
                    f"Token id {i} is outside the vocabulary of size {self.vocab_size}."
                )
            out.append(i)
        return self._sp.decode(out)

    def piece_to_id(self, piece: str) -> int:
        """The id of a piece (unk_id when the vocabulary lacks it)."""
        return self._sp.piece_to_id(piece)

    def id_to_piece(self, i: int) -> str:
        """The vocabulary piece of id ``i``."""
        return self._sp.id_to_piece(int(i))

    def to_bytes(self) -> bytes:
        """The serialized SentencePiece model."""
        return self._model_bytes

    @classmethod
    def from_bytes(cls, model_bytes: bytes) -> SentencePieceTokenizer:
        """Builds a tokenizer from :meth:`to_bytes` output."""
        return cls(model_bytes)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the serialized model to ``path``."""
        with open(path, "wb") as f:
            f.write(self._model_bytes)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SentencePieceTokenizer:
        """Reads a model written by :meth:`save` (or any ``.model`` file)."""
        with open(path, "rb") as f:
            return cls(f.read())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SentencePieceTokenizer) and other._model_bytes == self._model_bytes

    def __hash__(self) -> int:
        return hash(self._model_bytes)

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer(vocab_size={self.vocab_size})"


def train_sentencepiece(
    texts: Iterable[str],
    vocab_size: int,
    model_type: str = "unigram",
    *,
    seed: int = 0,
    character_coverage: float = 1.0,
    normalization_rule_name: str = "identity",
    max_sentence_length: int = 4096,
    input_sentence_size: int = 0,
    byte_fallback: bool = False,
    user_defined_symbols: Sequence[str] = (),
) -> SentencePieceTokenizer:
    """Trains a SentencePiece model in memory; the same inputs give the same model bytes.

    ``vocab_size`` is an upper bound: a corpus too small for it yields a smaller vocabulary.
    ``input_sentence_size`` > 0 caps the sentences used (the first ones, not a random sample).
    ``user_defined_symbols`` are pieces always kept whole (e.g. a "<mask>" token).
    """
    if vocab_size < 5:
        raise ValueError(f"vocab_size must be at least 5 (4 special ids + 1), got {vocab_size}.")

    errors: list[ValueError] = []

    def sentences() -> Iterable[str]:
        count = 0
        for text in texts:
            try:
                text = _check_text(text)
            except ValueError as e:
                errors.append(e)
                raise
            if text:
                yield text
                count += 1
                if input_sentence_size and count >= input_sentence_size:
                    return

    writer = io.BytesIO()
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences()),
            model_writer=writer,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            normalization_rule_name=normalization_rule_name,
            hard_vocab_limit=False,
            pad_id=PAD_ID,
            eos_id=EOS_ID,
            bos_id=BOS_ID,
            unk_id=UNK_ID,
            num_threads=1,
            shuffle_input_sentence=False,
            max_sentence_length=max_sentence_length,
            byte_fallback=byte_fallback,
            user_defined_symbols=list(user_defined_symbols),
            minloglevel=2,
        )
    except RuntimeError as e:
        if errors:  # An invalid text surfaced through SentencePiece's iterator.
            raise errors[0] from None
        raise ValueError(
            f"SentencePiece training failed: {str(e).strip().splitlines()[0]}"
        ) from None
    return SentencePieceTokenizer(writer.getvalue())
