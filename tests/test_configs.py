"""The shipped run configs: they load, document themselves, and hold the paper's settings."""

import ast
import glob
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from helpers import CONFIGS, TINY_CONFIG

from transformer_jax.config import ConfigError, load_config, set_key, validate
from transformer_jax.data import corpus_en_es as corpus
from transformer_jax.data.pipeline import BATCH_KEYS
from transformer_jax.data.tokenizer import train_sentencepiece
from transformer_jax.train.tasks import TranslationTask

CONFIG_FILES = sorted(glob.glob(os.path.join(CONFIGS, "*.py")))
BASE = os.path.join(CONFIGS, "translate_wmt14_base.py")
BIG = os.path.join(CONFIGS, "translate_wmt14_big.py")


def test_the_expected_configs_exist():
    names = {os.path.basename(p) for p in CONFIG_FILES}
    assert {"translate_tiny.py", "translate_wmt14_base.py", "translate_wmt14_big.py"} <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_config_loads_and_documents_itself(path):
    cfg = load_config(path)
    assert cfg.task == "translation"
    assert cfg.is_locked  # a mistyped key is an error, not a new field
    with open(path) as f:
        doc = ast.get_docstring(ast.parse(f.read()))
    assert doc, f"{path} has no module docstring"
    assert f"tjax train --config configs/{os.path.basename(path)}" in doc
    assert "Hardware:" in doc
    # Overrides reach every group of the loaded config.
    cfg = load_config(path, ["train.num_steps=7", "model.dropout_rate=0.2", "decode.alpha=0.5"])
    assert (cfg.train.num_steps, cfg.model.dropout_rate, cfg.decode.alpha) == (7, 0.2, 0.5)


def test_wmt14_base_is_the_papers_base_model():
    cfg = load_config(BASE)
    m, o = cfg.model, cfg.optimizer
    assert (m.d_model, m.d_ff, m.num_heads) == (512, 2048, 8)
    assert (m.num_encoder_layers, m.num_decoder_layers) == (6, 6)
    assert m.dropout_rate == 0.1
    assert m.share_embeddings and m.tie_output and m.norm_position == "post"
    assert (o.schedule, o.warmup_steps, o.lr_scale) == ("rsqrt", 4000, 1.0)
    assert (o.b1, o.b2, o.eps) == (0.9, 0.98, 1e-9)
    assert cfg.train.label_smoothing == 0.1
    assert cfg.train.num_steps == 100_000
    assert (cfg.decode.beam_size, cfg.decode.alpha, cfg.decode.extra_length) == (4, 0.6, 50)
    assert cfg.data.name == "wmt14_translate/de-en" and (cfg.data.src_key, cfg.data.tgt_key) == (
        "en",
        "de",
    )
    assert cfg.tokenizer.vocab_size == 37000


def test_wmt14_big_is_the_papers_big_model():
    base, cfg = load_config(BASE), load_config(BIG)
    m = cfg.model
    assert (m.d_model, m.d_ff, m.num_heads) == (1024, 4096, 16)
    assert (m.num_encoder_layers, m.num_decoder_layers) == (6, 6)
    assert m.dropout_rate == 0.3
    assert cfg.train.num_steps == 300_000
    # Everything else as the base config.
    for group in ("optimizer", "decode", "data", "tokenizer"):
        assert cfg[group].to_dict() == base[group].to_dict(), group
    assert cfg.train.label_smoothing == 0.1


class _Vocab:
    vocab_size, pad_id, eos_id, bos_id = 37000, 0, 1, 2


@pytest.mark.parametrize("path, millions", [(BASE, 65), (BIG, 213)], ids=["base", "big"])
def test_parameter_count_near_the_paper(path, millions):
    cfg = load_config(path)
    task = TranslationTask(cfg)
    config = task.model_config(_Vocab, _Vocab)
    model = task.build_model(config)
    shapes = jax.eval_shape(
        lambda rng: task.init_variables(model, rng, task.dummy_batch(config)), jax.random.key(0)
    )
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    assert abs(n / 1e6 - millions) / millions < 0.05, n


@pytest.fixture(scope="module")
def tok():
    pairs = corpus.generate_split("train", num_examples=300)
    return train_sentencepiece([t for p in pairs for t in p], vocab_size=200)


def test_wmt14_train_batches_on_mock_data(tok):
    cfg = load_config(BASE)  # the big config shares its data settings
    task = TranslationTask(cfg)
    with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
        it = iter(task.train_dataset(tok, tok, 0, 1))
        batches = [next(it)]
        pairs = task.eval_examples(cfg.data.eval_split, limit=3)
    L = cfg.data.max_length
    for batch in batches:
        assert set(batch) == set(BATCH_KEYS)
        rows = batch["inputs"].shape[0]
        assert rows * L <= cfg.data.tokens_per_batch
        # Rows split evenly over the 8 test devices (50000 // 256 = 195 rows -> 192).
        assert rows % jax.local_device_count() == 0 and rows >= 192
        for key in BATCH_KEYS:
            assert batch[key].shape == (rows, L) and batch[key].dtype == np.int32, key
        assert (batch["inputs_segmentation"] > 0).sum() > 0
        assert (batch["targets"][batch["targets_segmentation"] == 0] == 0).all()
    assert len(pairs) == 3 and all(isinstance(t, str) for p in pairs for t in p)


def test_validate_rejects_a_batch_smaller_than_one_sequence():
    with pytest.raises(
        ConfigError, match=r"'data.tokens_per_batch'=16: must be >= data.max_length"
    ):
        load_config(TINY_CONFIG, ["data.tokens_per_batch=16"])
    cfg = load_config(BASE)
    set_key(cfg, "data.max_length", "512")
    set_key(cfg, "data.tokens_per_batch", "511")
    with pytest.raises(ConfigError, match="tokens_per_batch"):
        validate(cfg)
    set_key(cfg, "data.tokens_per_batch", "512")
    validate(cfg)  # equal is enough: one full-length sequence per batch
