"""Tests of the SentencePiece tokenizer."""

import numpy as np
import pytest

from transformer_jax.data.tokenizer import (
    SentencePieceTokenizer,
    Tokenizer,
    train_sentencepiece,
)
from transformer_jax.tasks.translation import corpus_en_es as corpus


def _texts(split: str, num_examples: int | None = None) -> list[str]:
    return [t for pair in corpus.generate_split(split, num_examples=num_examples) for t in pair]


@pytest.fixture(scope="module")
def tokenizer() -> SentencePieceTokenizer:
    return train_sentencepiece(_texts("train", 20_000), vocab_size=600)


def test_special_ids(tokenizer):
    assert isinstance(tokenizer, Tokenizer)
    assert (tokenizer.pad_id, tokenizer.eos_id, tokenizer.bos_id, tokenizer.unk_id) == (0, 1, 2, 3)
    assert 100 < tokenizer.vocab_size <= 600


def test_round_trip_eval_sentences(tokenizer):
    texts = _texts("validation") + _texts("test") + ["¿El gato duerme en el sofá?", "Ñandú, ¡sí!"]
    for text in texts:
        ids = tokenizer.encode(text)
        assert all(isinstance(i, int) for i in ids)
        assert tokenizer.unk_id not in ids[:-1] or "Ñ" in text
        assert tokenizer.decode(ids) == text or "Ñ" in text
    for text in texts[:-1]:
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_decode_stops_at_eos_and_skips_pad_bos(tokenizer):
    ids = tokenizer.encode("El gato duerme en el sofá.")
    expected = "El gato duerme en el sofá."
    assert tokenizer.decode([tokenizer.bos_id, *ids, tokenizer.eos_id, *ids]) == expected
    assert tokenizer.decode(np.asarray([*ids, tokenizer.eos_id, 0, 0], np.int32)) == expected
    assert tokenizer.decode([*ids[:2], tokenizer.pad_id, *ids[2:]]) == expected
    assert tokenizer.decode([]) == ""
    with pytest.raises(ValueError, match="outside"):
        tokenizer.decode([tokenizer.vocab_size + 5])


def test_training_is_deterministic():
    texts = _texts("train", 3_000)
    first = train_sentencepiece(texts, vocab_size=300)
    second = train_sentencepiece(iter(texts), vocab_size=300)
    assert first.to_bytes() == second.to_bytes()
    bpe = train_sentencepiece(texts, vocab_size=300, model_type="bpe")
    assert bpe.to_bytes() == train_sentencepiece(texts, vocab_size=300, model_type="bpe").to_bytes()
    assert bpe.decode(bpe.encode(texts[0])) == texts[0]


def test_too_large_vocab_for_tiny_corpus():
    tok = train_sentencepiece(["El gato duerme en el sofá.", "¿Tú lees?"], vocab_size=8000)
    assert tok.vocab_size < 100
    assert tok.decode(tok.encode("¿El gato lees el sofá?")) == "¿El gato lees el sofá?"


def test_serialisation(tokenizer, tmp_path):
    restored = SentencePieceTokenizer.from_bytes(tokenizer.to_bytes())
    path = tmp_path / "spm.model"
    tokenizer.save(path)
    loaded = SentencePieceTokenizer.load(path)
    assert restored == tokenizer == loaded
    text = "Los ratones viejos no durmieron debajo del sofá."
    assert loaded.encode(text) == tokenizer.encode(text)
    assert loaded.vocab_size == tokenizer.vocab_size


def test_invalid_inputs(tokenizer):
    for bad in (b"El gato", 3, None, ["a"]):
        with pytest.raises(ValueError, match="must be str"):
            tokenizer.encode(bad)
    with pytest.raises(ValueError, match="UTF-8"):
        tokenizer.encode("gato \ud800")
    with pytest.raises(ValueError, match="UTF-8"):
        train_sentencepiece(["ok", "bad \udcff"], vocab_size=50)
    with pytest.raises(ValueError, match="must be str"):
        train_sentencepiece([b"bytes"], vocab_size=50)
    with pytest.raises(ValueError):
        SentencePieceTokenizer(b"not a model")
    with pytest.raises(ValueError):
        SentencePieceTokenizer(b"")
