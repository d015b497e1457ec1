"""The shipped run configs: they load, document themselves, and hold the paper's settings."""

import ast
import glob
import os
import shutil
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from helpers import CONFIGS, ROOT, TINY_CONFIG

from transformer_jax.config import (
    SHIPPED_CONFIGS,
    ConfigError,
    load_config,
    set_key,
    shipped_configs,
    task_class,
    validate,
)
from transformer_jax.data.pipeline import BATCH_KEYS
from transformer_jax.data.tokenizer import train_sentencepiece
from transformer_jax.tasks.translation import corpus_en_es as corpus
from transformer_jax.tasks.translation.task import TranslationTask

CONFIG_FILES = sorted(
    p for p in glob.glob(os.path.join(CONFIGS, "*.py")) if not os.path.basename(p).startswith("_")
)
BASE = os.path.join(CONFIGS, "translate_wmt14_base.py")
BIG = os.path.join(CONFIGS, "translate_wmt14_big.py")


def test_the_expected_configs_exist():
    names = {os.path.basename(p) for p in CONFIG_FILES}
    assert {"translate_tiny.py", "translate_wmt14_base.py", "translate_wmt14_big.py"} <= names
    assert {"classify_tiny.py", "classify_sst2_base.py", "classify_imdb_base.py"} <= names
    assert "mlm_tiny.py" in names
    assert {"lm_tiny.py", "lm_gpt2_124m.py", "lm_llama_1b.py"} <= names


# A shipped config's name starts with its task's word.
TASK_OF_PREFIX = {
    "translate_": "translation",
    "classify_": "classification",
    "mlm_": "masked_lm",
    "lm_": "causal_lm",
    "multimodal_": "multimodal",
}
# One override per task into a group only that task's configs have: (key, raw, value).
TASK_OVERRIDE = {
    "translation": ("decode.alpha", "0.5", 0.5),
    "classification": ("head.dropout", "0.2", 0.2),
    "masked_lm": ("mlm.mask_rate", "0.2", 0.2),
    "causal_lm": ("generate.top_k", "5", 5),
    "multimodal": ("image.num_frames", "6", 6),
}


def _leaf_keys(cfg) -> set[str]:
    out = set()
    for key, value in cfg.items():
        if hasattr(value, "items"):
            out |= {f"{key}.{k}" for k in _leaf_keys(value)}
        else:
            out.add(key)
    return out


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_config_loads_and_documents_itself(path):
    cfg = load_config(path)
    name = os.path.basename(path)[:-3]
    (task_name,) = [t for p, t in TASK_OF_PREFIX.items() if name.startswith(p)]
    assert cfg.task == task_name
    assert cfg.is_locked  # a mistyped key is an error, not a new field
    # Exactly its task's keys: the base's, none missing, none made up.
    assert _leaf_keys(cfg) == _leaf_keys(task_class(cfg).base_config())
    with open(path) as f:
        doc = ast.get_docstring(ast.parse(f.read()))
    assert doc, f"{path} has no module docstring"
    assert f"tjax train --config {name} " in doc
    assert "Hardware:" in doc
    # Overrides reach the groups every config has, and the task's own.
    key, raw, value = TASK_OVERRIDE[task_name]
    # (More steps than any warmup: a linear schedule's decay needs some.)
    cfg = load_config(path, ["train.num_steps=12345", "model.dropout_rate=0.2", f"{key}={raw}"])
    group, field = key.split(".")
    assert (cfg.train.num_steps, cfg.model.dropout_rate, cfg[group][field]) == (12345, 0.2, value)


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
    config = task.model_config({"src_tokenizer": _Vocab, "tgt_tokenizer": _Vocab})
    model = task.build_model(config)
    shapes = jax.eval_shape(
        lambda rng: task.init_variables(model, rng, task.example_batch(config)), jax.random.key(0)
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
        it = iter(task.train_dataset({"src_tokenizer": tok, "tgt_tokenizer": tok}, 0, 1))
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


# -- configs by name, shipped in the package ------------------------------------------------


def test_a_shipped_config_loads_by_name(tmp_path, monkeypatch):
    assert os.path.samefile(CONFIGS, SHIPPED_CONFIGS)  # the checkout's configs/ is the package's
    assert shipped_configs() == [os.path.basename(p)[:-3] for p in CONFIG_FILES]
    monkeypatch.chdir(tmp_path)  # no configs/ here
    by_path = load_config(TINY_CONFIG).to_dict()
    assert load_config("translate_tiny").to_dict() == by_path
    assert load_config("translate_tiny.py", ["train.num_steps=7"]).train.num_steps == 7
    # A file given by path wins over a shipped name.
    (tmp_path / "translate_tiny.py").write_text(
        "from transformer_jax.tasks.translation.config import translation_base\n"
        "def get_config():\n"
        "    c = translation_base()\n"
        "    c.train.num_steps = 3\n"
        "    return c\n"
    )
    assert load_config("translate_tiny.py").train.num_steps == 3
    assert load_config("translate_tiny").to_dict() == by_path


def test_an_unknown_config_is_one_line_listing_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    listed = ", ".join(shipped_configs())
    with pytest.raises(ConfigError) as e:
        load_config("translate_tin")
    assert str(e.value) == f"unknown config 'translate_tin': give a config file or one of {listed}"
    with pytest.raises(ConfigError) as e:
        load_config("configs/translate_tiny.py")
    assert str(e.value) == (
        f"config file not found: configs/translate_tiny.py (shipped configs, by name: {listed})"
    )


def test_the_wheel_ships_the_configs(tmp_path):
    """What pip installs (as in Colab) has no checkout: names and the demo use its configs."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src)
    shutil.copytree(
        os.path.join(ROOT, "transformer_jax"),
        src / "transformer_jax",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(tmp_path / "dist"), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        z.extractall(site)
    for path in CONFIG_FILES:
        assert f"transformer_jax/configs/{os.path.basename(path)}" in names

    env = dict(os.environ, PYTHONPATH=str(site), TF_CPP_MIN_LOG_LEVEL="3")

    def run(*args):
        return subprocess.run(
            [sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True
        )

    found = run(
        "-c", "from transformer_jax import config; print(config.config_file('translate_tiny'))"
    )
    assert found.stdout.strip() == str(site / "transformer_jax" / "configs" / "translate_tiny.py")
    # Both stop at the config's override check, after loading the config from the wheel.
    bad = ["--workdir", "w", "--config.train.num_stepz=1"]
    train = run("-m", "transformer_jax", "train", "--config", "translate_tiny", *bad)
    assert train.returncode == 2 and "did you mean 'train.num_steps'" in train.stderr, train.stderr
    demo = run("-m", "transformer_jax.demo", *bad)
    assert demo.returncode == 2, demo.stderr
    assert demo.stderr.strip().splitlines() == [
        "demo: error: unknown config key 'train.num_stepz' (did you mean 'train.num_steps'?)"
    ]
