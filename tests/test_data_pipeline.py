"""Tests of the TFDS catalog and the Grain translation pipelines."""

import collections
import json
import os
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from transformer_jax.data import catalog
from transformer_jax.data.pipeline import (
    BATCH_KEYS,
    default_bucket_boundaries,
    iterator_state_to_json,
    restore_iterator_state,
    translation_dataset,
    translation_eval_examples,
)
from transformer_jax.data.tokenizer import train_sentencepiece
from transformer_jax.tasks.translation import corpus_en_es as corpus

MAX_LEN = 24
TOKENS = 384


@pytest.fixture(scope="module")
def pairs() -> list[tuple[str, str]]:
    return corpus.generate_split("train", num_examples=600)


@pytest.fixture(scope="module")
def source(pairs) -> list[dict[str, bytes]]:
    return [{"en": en.encode(), "es": es.encode()} for en, es in pairs]


@pytest.fixture(scope="module")
def tok(pairs):
    return train_sentencepiece([t for p in pairs for t in p], vocab_size=200)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    catalog.prepare("en_es_grammar/tiny", data_dir)
    return data_dir


def make(source, tok, **kwargs):
    args = dict(
        src_key="en",
        tgt_key="es",
        src_tokenizer=tok,
        tgt_tokenizer=tok,
        max_length=MAX_LEN,
        tokens_per_batch=TOKENS,
    )
    return translation_dataset(source, **{**args, **kwargs})


def examples_of(batch) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The (inputs, targets) token sequences of every segment of a batch."""
    out = []
    for r in range(batch["inputs"].shape[0]):
        seg_in, seg_tgt = batch["inputs_segmentation"][r], batch["targets_segmentation"][r]
        for s in sorted(set(seg_in[seg_in > 0].tolist())):
            out.append(
                (
                    tuple(batch["inputs"][r][seg_in == s].tolist()),
                    tuple(batch["targets"][r][seg_tgt == s].tolist()),
                )
            )
    return out


def expected_examples(source, tok, max_len=MAX_LEN):
    def enc(text):
        return tuple(tok.encode(text.decode())[: max_len - 1] + [tok.eos_id])

    return [(enc(ex["en"]), enc(ex["es"])) for ex in source]


def check_invariants(batch, tokens_per_batch=TOKENS):
    assert set(batch) == set(BATCH_KEYS)
    shape = batch["inputs"].shape
    assert shape[0] * shape[1] <= tokens_per_batch
    for key in BATCH_KEYS:
        assert batch[key].dtype == np.int32 and batch[key].shape == shape
    for side in ("inputs", "targets"):
        ids, seg, pos = (batch[side], batch[f"{side}_segmentation"], batch[f"{side}_position"])
        assert np.all((ids != 0) == (seg != 0))
        assert np.all(pos[seg == 0] == 0)
        for r in range(shape[0]):
            for s in set(seg[r][seg[r] > 0].tolist()):
                where = np.flatnonzero(seg[r] == s)
                assert np.array_equal(where, np.arange(where[0], where[-1] + 1))  # contiguous
                assert np.array_equal(pos[r][where], np.arange(len(where)))  # restarts at 0
                assert ids[r][where[-1]] == 1  # ends with eos
    # Segments of one row are the same examples on both sides.
    for r in range(shape[0]):
        in_segs = set(batch["inputs_segmentation"][r].tolist()) - {0}
        assert in_segs == set(batch["targets_segmentation"][r].tolist()) - {0}


# -- catalog --------------------------------------------------------------------------------


def test_prepare_and_read_back(tiny_dir):
    sizes = {"train": 2000, "validation": 200, "test": 200}
    for split, n in sizes.items():
        src = catalog.data_source("en_es_grammar/tiny", split, tiny_dir)
        assert len(src) == n
        got = {(ex["en"].decode(), ex["es"].decode()) for ex in (src[i] for i in range(n))}
        assert got == set(corpus.generate_split(split, num_examples=n))
        if split == "train":
            assert ("The cat sleeps on the couch.", "El gato duerme en el sofá.") in got
    b = catalog.builder("en_es_grammar/tiny", tiny_dir)
    marker = os.path.join(b.data_dir, "dataset_info.json")
    mtime = os.path.getmtime(marker)
    catalog.prepare("en_es_grammar/tiny", tiny_dir)  # idempotent: nothing regenerated
    assert os.path.getmtime(marker) == mtime
    assert str(b.version) == "1.1.0" and b.name == "en_es_grammar"


def test_prepare_full_config(tmp_path):
    start = time.perf_counter()
    b = catalog.prepare("en_es_grammar", str(tmp_path))
    assert time.perf_counter() - start < 30
    assert {s: b.info.splits[s].num_examples for s in corpus.SPLITS} == corpus.SPLIT_SIZES
    src = catalog.data_source("en_es_grammar", "test", str(tmp_path))
    got = {(ex["en"].decode(), ex["es"].decode()) for ex in (src[i] for i in range(len(src)))}
    assert got == set(corpus.generate_split("test"))


def test_catalog_errors(tiny_dir):
    with pytest.raises(ValueError, match="no_such_dataset") as e:
        catalog.data_source("no_such_dataset", "train", tiny_dir)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="'bogus'.*train, validation, test"):
        catalog.data_source("en_es_grammar/tiny", "bogus", tiny_dir)
    with pytest.raises(ValueError, match="Unknown config 'huge'"):
        catalog.data_source("en_es_grammar/huge", "train", tiny_dir)
    with pytest.raises(ValueError, match="not prepared.*tfds build wmt14_translate/de-en") as e:
        catalog.data_source("wmt14_translate/de-en", "train", tiny_dir)
    assert "\n" not in str(e.value)


def test_wmt14_mock_through_pipeline(tok):
    with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
        src = catalog.data_source("wmt14_translate/de-en", "train", None)
        assert len(src) == 40 and {"en", "de"} <= set(src[0])
        ds = make(src, tok, tgt_key="de", num_epochs=1, drop_remainder=False)
        batches = list(ds)
        eval_pairs = translation_eval_examples(src, "en", "de", limit=3)
    assert len(eval_pairs) == 3 and all(isinstance(t, str) for p in eval_pairs for t in p)
    assert sum(len(examples_of(b)) for b in batches) == 40
    for b in batches:
        check_invariants(b)


def test_pipeline_reads_tfds_source(tiny_dir, tok):
    src = catalog.data_source("en_es_grammar/tiny", "validation", tiny_dir)
    batches = list(make(src, tok, batching="bucket", num_epochs=1, drop_remainder=False))
    assert sorted(e for b in batches for e in examples_of(b)) == sorted(expected_examples(src, tok))
    pairs = translation_eval_examples(src, "en", "es")
    assert len(pairs) == 200 and pairs[0] == (src[0]["en"].decode(), src[0]["es"].decode())


# -- pipeline -------------------------------------------------------------------------------


@pytest.mark.parametrize("batching", ["pack", "bucket", "pad"])
def test_every_example_once_per_epoch(source, tok, batching):
    ds = make(source, tok, batching=batching, num_epochs=1, drop_remainder=False, seed=3)
    batches = list(ds)
    for b in batches:
        check_invariants(b)
    got = collections.Counter(e for b in batches for e in examples_of(b))
    assert got == collections.Counter(expected_examples(source, tok))
    if batching == "pack":
        assert batches[0]["inputs"].shape == (TOKENS // MAX_LEN, MAX_LEN)
        assert max(int(b["inputs_segmentation"].max()) for b in batches) >= 2  # really packed
    if batching == "bucket":
        lengths = {b["inputs"].shape[1] for b in batches}
        assert lengths <= set(default_bucket_boundaries(MAX_LEN)) and len(lengths) >= 2
        for b in batches:
            assert b["inputs"].shape[0] == TOKENS // b["inputs"].shape[1]
            lengths_in_batch = (b["inputs_segmentation"] > 0).sum(1)
            assert lengths_in_batch.max() <= b["inputs"].shape[1]


def test_pad_mode_keeps_source_order(source, tok):
    batches = list(
        make(source, tok, batching="pad", shuffle=False, num_epochs=1, drop_remainder=False)
    )
    rows = TOKENS // MAX_LEN
    assert len(batches) == -(-len(source) // rows)
    assert all(b["inputs"].shape == (rows, MAX_LEN) for b in batches)  # last one padded
    assert [e for b in batches for e in examples_of(b)] == expected_examples(source, tok)
    assert len(list(make(source, tok, batching="pad", num_epochs=1))) == len(source) // rows


def test_truncation_keeps_eos(tok):
    long = " ".join(["El gato duerme en el sofá."] * 10)
    src = [{"en": long.encode(), "es": b"Hola."}]
    (batch,) = list(make(src, tok, batching="pad", num_epochs=1, drop_remainder=False))
    assert batch["inputs_segmentation"][0].sum() == MAX_LEN and batch["inputs"][0, -1] == tok.eos_id
    assert batch["targets"][0, batch["targets_segmentation"][0].sum() - 1] == tok.eos_id


def test_sharding_partitions_data(source, tok):
    shards = []
    for index in range(3):
        ds = make(
            source,
            tok,
            batching="pack",
            num_epochs=1,
            drop_remainder=False,
            shard_index=index,
            shard_count=3,
        )
        shards.append(collections.Counter(e for b in ds for e in examples_of(b)))
    assert all(shards)
    assert (
        not (shards[0] & shards[1]) and not (shards[1] & shards[2]) and not (shards[0] & shards[2])
    )
    assert shards[0] + shards[1] + shards[2] == collections.Counter(expected_examples(source, tok))


def test_shuffle_is_seeded_and_differs_per_epoch(source, tok):
    def order(seed, epochs=2):
        ds = make(source, tok, batching="pad", seed=seed, num_epochs=epochs, drop_remainder=False)
        return [e for b in ds for e in examples_of(b)]

    first = order(0)
    assert first == order(0)
    assert first != order(1)
    n = len(source)
    assert first[:n] != first[n:] and sorted(first[:n]) == sorted(first[n:])
    assert first[:n] != expected_examples(source, tok)


@pytest.mark.parametrize("batching", ["pack", "bucket", "pad"])
def test_resume_from_state(source, tok, batching):
    ds = make(source, tok, batching=batching, seed=5, num_epochs=None)
    it = iter(ds)
    # Far enough to cross at least one epoch boundary for the resumed part.
    for _ in range(30):
        next(it)
    state = iterator_state_to_json(it)
    json.loads(state)
    json.dumps(it.get_state())  # the raw state is JSON-serialisable too
    expected = [next(it) for _ in range(20)]
    resumed = iter(ds)
    restore_iterator_state(resumed, state)
    for a, b in zip(expected, [next(resumed) for _ in range(20)], strict=True):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    # Also restore into an iterator that has already produced batches.
    used = iter(ds)
    next(used)
    restore_iterator_state(used, state)
    np.testing.assert_array_equal(next(used)["targets"], expected[0]["targets"])


def test_batch_size_multiple(source, tok):
    ds = make(
        source, tok, batching="bucket", tokens_per_batch=200, batch_size_multiple=8, num_epochs=1
    )
    for b in ds:
        assert b["inputs"].shape[0] % 8 == 0


def test_bad_arguments(source, tok):
    for kwargs, match in [
        ({"batching": "zip"}, "batching"),
        ({"tokens_per_batch": 10}, "tokens_per_batch"),
        ({"shard_index": 2, "shard_count": 2}, "shard_index"),
        ({"num_epochs": 0}, "num_epochs"),
        ({"batching": "bucket", "bucket_boundaries": [8, 16]}, "bucket_boundaries"),
    ]:
        with pytest.raises(ValueError, match=match):
            make(source, tok, **kwargs)
    with pytest.raises(ValueError, match="no field 'fr'"):
        next(iter(make(source, tok, tgt_key="fr")))
