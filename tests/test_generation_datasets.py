"""The catalog-dataset language-model configs (lm1b, Wikipedia) on mocked TFDS data,
and the parameter counts of their models.

The real datasets need a download; `tfds.testing.mock_data` (USE_CODE: the builder's
features, random examples) serves `as_data_source`, which the pipeline reads.
"""

import json
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from helpers import compilation_cache

from transformer_jax.__main__ import main
from transformer_jax.config import load_config, make_task

NUM_EXAMPLES = 24
CONFIGS = ("lm_gpt2_124m", "lm_llama_1b")
SMALL = [
    "tokenizer.vocab_size=60",
    "tokenizer.model_type=unigram",
    "data.max_length=32",
    "data.batch_size=8",
    "data.eval_batch_size=8",
]
TINY_MODEL = [
    "model.d_model=16",
    "model.num_heads=2",
    "model.num_kv_heads=0",
    "model.d_ff=32",
    "model.num_decoder_layers=1",
    "model.max_position=64",
    "model.dtype=float32",
    "model.remat=none",
    "model.scan_layers=False",
    "mesh.rules=data_parallel",
    "mesh.fsdp=1",
    "mesh.data=-1",
]


def mocked():
    return tfds.testing.mock_data(
        num_examples=NUM_EXAMPLES, policy=tfds.testing.MockPolicy.USE_CODE
    )


@pytest.mark.parametrize("name", CONFIGS)
def test_packed_batches_from_the_catalog_dataset(name):
    cfg = load_config(name, SMALL)
    task = make_task(cfg)
    with mocked():
        processors = task.make_processors("")
        train = next(iter(task.train_dataset(processors, 0, 1)))
        evals = list(task.eval_dataset(processors, cfg.data.eval_split, 0, 1))
    bos = processors["tokenizer"].bos_id if hasattr(processors["tokenizer"], "bos_id") else 2
    for batch in [train, *evals]:
        assert set(batch) == {"inputs", "segment_ids", "positions"}
        assert all(v.shape == (8, 32) and v.dtype == np.int32 for v in batch.values())
        starts = (batch["positions"] == 0) & (batch["segment_ids"] > 0)
        assert starts.any()
    # Every eval document starts once with bos (mock texts are short: no cut pieces).
    n_docs = sum(
        int(((b["positions"] == 0) & (b["segment_ids"] > 0) & (b["inputs"] == bos)).sum())
        for b in evals
    )
    assert n_docs == NUM_EXAMPLES


@pytest.mark.parametrize(
    "name, vocab, millions", [("lm_gpt2_124m", 50257, 124.4), ("lm_llama_1b", 32000, 1100.0)]
)
def test_parameter_count_is_the_models(name, vocab, millions):
    """GPT-2 small: 124.4M with its 50,257-token vocabulary; TinyLlama: 1.10B."""
    import types

    cfg = load_config(name)
    task = make_task(cfg)
    tok = types.SimpleNamespace(vocab_size=vocab, bos_id=1, eos_id=2, pad_id=0)
    config = task.model_config({"tokenizer": tok})
    model = task.build_model(config)
    shapes = jax.eval_shape(
        lambda rng: task.init_variables(model, rng, task.example_batch(config)), jax.random.key(0)
    )
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    assert abs(n / 1e6 - millions) / millions < 0.01, n


@pytest.mark.parametrize("name", CONFIGS)
def test_a_short_training_run_then_generate(name, tmp_path, tmp_path_factory, capsys):
    workdir = str(tmp_path / "run")
    overrides = SMALL + TINY_MODEL
    overrides += [
        "optimizer.warmup_steps=1",
        "train.num_steps=2",
        "train.checkpoint_every=2",
        "train.eval_every=2",
        "train.eval_batches=1",
        "train.log_every=1",
        "train.progress=False",
        "generate.eval_examples=4",
        "generate.max_new_tokens=4",
    ]
    argv = ["train", "--config", name, "--workdir", workdir]
    with mocked(), compilation_cache(tmp_path_factory):
        assert main(argv + [f"--config.{o}" for o in overrides]) == 0
    assert os.path.isdir(os.path.join(workdir, "checkpoints"))
    capsys.readouterr()
    assert main(["generate", "--workdir", workdir, "--json", "a b", "c"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(lines) == 2
    assert lines[0][0]["generated_text"].startswith("a b")
    assert lines[1][0]["generated_text"].startswith("c")
