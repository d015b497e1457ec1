"""The Task protocol is all the trainer knows: a toy task defined here trains, stops,
resumes and evaluates through the real `train_and_evaluate` and `evaluate_checkpoint`.

The toy task reverses short digit sequences with an encoder built from nn/ blocks;
its processor is a digit vocabulary and its evaluator exact-match accuracy. It is
plugged in by import path (`cfg.task = "test_task_contract:ToyTask"`).
"""

import base64
import os
import signal

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import compilation_cache, train_losses

from transformer_jax.config import ConfigError, apply_overrides, base, checker
from transformer_jax.data.processors import (
    processors_from_json,
    processors_to_json,
    register_processor,
)
from transformer_jax.nn.config import TransformerConfig
from transformer_jax.nn.embed import Embed, add_positions
from transformer_jax.nn.transformer import Encoder
from transformer_jax.train.losses import smoothed_cross_entropy
from transformer_jax.train.preemption import Preempted
from transformer_jax.train.task import Evaluator, Task

TOY = "test_task_contract:ToyTask"


class Digits:
    """The toy processor: ids 0 (padding) and 1..n for the digits 0..n-1."""

    pad_id = 0

    def __init__(self, n: int):
        self.n = n
        self.vocab_size = n + 1


register_processor("toy_digits", Digits, lambda d: {"n": d.n}, lambda b: Digits(b["n"]))


class Reverser(nn.Module):
    config: TransformerConfig

    @nn.compact
    def __call__(self, ids_BL):
        cfg = self.config
        embed = Embed(cfg.vocab_size, cfg, name="embed")
        pos_BL = jnp.broadcast_to(jnp.arange(ids_BL.shape[1]), ids_BL.shape)
        x_BLD = add_positions(embed(ids_BL), pos_BL, cfg)
        seg_BL = (ids_BL != cfg.pad_id).astype(jnp.int32)
        return embed.attend(Encoder(cfg, name="encoder")(x_BLD, seg_BL, pos_BL))


def _example(index: int, length: int, digits: int) -> dict[str, np.ndarray]:
    x = np.random.default_rng(index).integers(1, digits + 1, length).astype(np.int32)
    return {"inputs": x, "targets": x[::-1].copy()}


SPLIT_OFFSET = {"train": 0, "validation": 10**6, "test": 2 * 10**6}


class ToyTask(Task):
    name = "toy"
    base_config_name = "test_task_contract.toy_base()"
    stop_at_batch = -1  # a drill: SIGTERM to this process when this batch is built

    @classmethod
    def base_config(cls):
        return toy_base()

    @classmethod
    def validate_config(cls, cfg):
        need, _ = checker(cfg)
        need("toy.digits", lambda v: v >= 2, "must be >= 2")

    def make_processors(self, workdir):
        return {"digits": Digits(self.cfg.toy.digits)}

    def _batches(self, split, rows, count, shard_index, shard_count, hook=False):
        L, n, offset = self.cfg.data.max_length, self.cfg.toy.digits, SPLIT_OFFSET[split]

        def make(i):
            if hook and i == ToyTask.stop_at_batch:
                ToyTask.stop_at_batch = -1
                os.kill(os.getpid(), signal.SIGTERM)
            ids = range(
                (i * shard_count + shard_index) * rows, (i * shard_count + shard_index + 1) * rows
            )
            examples = [_example(offset + j, L, n) for j in ids]
            return {k: np.stack([e[k] for e in examples]) for k in ("inputs", "targets")}

        return (
            grain.MapDataset.range(count)
            .map(make)
            .to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
        )

    def train_dataset(self, processors, shard_index, shard_count):
        rows = self.cfg.data.tokens_per_batch // self.cfg.data.max_length // shard_count
        return self._batches("train", rows, 10**6, shard_index, shard_count, hook=True)

    def eval_dataset(self, processors, split, shard_index, shard_count):
        rows = self.cfg.data.eval_tokens_per_batch // self.cfg.data.max_length // shard_count
        return self._batches(split, rows, 2, shard_index, shard_count)

    def model_config(self, processors):
        m = self.cfg.model
        return TransformerConfig(
            vocab_size=processors["digits"].vocab_size,
            d_model=m.d_model,
            num_heads=2,
            d_ff=2 * m.d_model,
            num_encoder_layers=1,
            num_decoder_layers=1,
            dropout_rate=m.dropout_rate,
            max_position=self.cfg.data.max_length,
            attention_impl=m.attention_impl,
            dtype=jnp.dtype(m.dtype),
        )

    def build_model(self, config):
        return Reverser(config)

    def example_batch(self, config):
        ones = np.ones((1, self.cfg.data.max_length), np.int32)
        return {"inputs": ones, "targets": ones}

    def init_variables(self, model, rng, batch):
        return model.init(rng, batch["inputs"])

    def loss(self, model, params, batch, rng):
        logits = model.apply({"params": params}, batch["inputs"], rngs={"dropout": rng})
        weights = batch["targets"] != 0
        loss_sum, nll_sum, w, correct = smoothed_cross_entropy(
            logits, batch["targets"], weights, 0.0
        )
        sums = {"loss_sum": loss_sum, "nll_sum": nll_sum, "correct_sum": correct, "weight_sum": w}
        return loss_sum / jnp.maximum(w, 1.0), sums

    def batch_counts(self, batch, config):
        B, L = batch["inputs"].shape
        return jnp.sum(batch["inputs"] != 0).astype(jnp.float32), 6.0 * B * L * config.d_model**2

    def evaluators(self):
        return [ExactMatch(self)]

    def pipeline(self, loaded, **settings):
        model = self.build_model(loaded.model_config)

        def reverse(sequences):
            logits = model.apply({"params": loaded.params}, np.asarray(sequences, np.int32))
            return [{"reversed": row.tolist()} for row in np.asarray(jnp.argmax(logits, -1))]

        return reverse


class ExactMatch(Evaluator):
    """The share of sequences reversed without a mistake."""

    name = "exact_match"

    def __init__(self, task):
        self.task = task

    def __call__(self, params, config, processors, split, limit):
        limit = self.task.cfg.toy.examples if limit is None else limit
        L, n = self.task.cfg.data.max_length, processors["digits"].n
        examples = [_example(SPLIT_OFFSET[split] + i, L, n) for i in range(limit or 64)]
        inputs = np.stack([e["inputs"] for e in examples])
        logits = jax.jit(self.task.build_model(config).apply)({"params": params}, inputs)
        hyps = np.asarray(jnp.argmax(logits, -1))
        right = [bool((h == e["targets"]).all()) for h, e in zip(hyps, examples)]
        return {
            "exact_match": float(np.mean(right)),
            "examples": [
                {
                    "source": e["inputs"].tolist(),
                    "reference": e["targets"].tolist(),
                    "hypothesis": h.tolist(),
                }
                for e, h in list(zip(examples, hyps))[:2]
            ],
        }


def toy_base():
    import ml_collections

    c = base()
    c.task = TOY
    c.data.name = "reversed_digits"
    c.data.max_length = 6
    c.data.tokens_per_batch = 16 * 6  # 16 rows: a multiple of the 8 test devices
    c.data.eval_tokens_per_batch = 16 * 6
    c.model.d_model = 32
    c.model.dropout_rate = 0.0
    c.optimizer.schedule = "constant"
    c.optimizer.lr_scale = 3e-3
    c.train.num_steps = 8
    c.train.log_every = 1
    c.train.eval_every = 4
    c.train.eval_batches = 0
    c.train.checkpoint_every = 2
    c.train.keep_checkpoints = 10
    c.train.progress = False
    c.toy = ml_collections.ConfigDict()
    c.toy.digits = 5
    c.toy.examples = 32  # sequences scored by the evaluator during training
    return c


def toy_config(**overrides):
    return apply_overrides(toy_base(), [f"{k}={v}" for k, v in overrides.items()])


def _train(workdir, tmp_path_factory, hooks=(), **overrides):
    from transformer_jax.train.trainer import train_and_evaluate

    with compilation_cache(tmp_path_factory):
        return train_and_evaluate(toy_config(**overrides), workdir, hooks=hooks)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("toy_a"))
    return workdir, _train(workdir, tmp_path_factory)


def test_toy_task_trains_through_the_real_trainer(uninterrupted):
    workdir, result = uninterrupted
    losses = train_losses(workdir)
    assert sorted(losses) == list(range(1, 9))
    assert losses[8] < losses[1]
    assert 0.0 <= result["validation/exact_match"] <= 1.0
    assert "validation/loss" in result
    steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert steps == [2, 4, 6, 8]


def test_toy_task_stopped_by_a_signal_resumes_as_if_uninterrupted(uninterrupted, tmp_path_factory):
    workdir_a, result_a = uninterrupted
    workdir = str(tmp_path_factory.mktemp("toy_b"))
    ToyTask.stop_at_batch = 4  # built for step 5: the run saves step 5 and stops
    with pytest.raises(Preempted, match="stopped at step 5"):
        _train(workdir, tmp_path_factory)
    assert sorted(train_losses(workdir)) == [1, 2, 3, 4, 5]
    result_b = _train(workdir, tmp_path_factory)  # the same command again resumes
    losses_a, losses_b = train_losses(workdir_a), train_losses(workdir)
    assert sorted(losses_b) == list(range(1, 9))
    for step in range(1, 9):
        assert losses_b[step] == pytest.approx(losses_a[step], rel=1e-6), step
    for key in ("validation/loss", "validation/exact_match"):
        assert result_b[key] == pytest.approx(result_a[key], rel=1e-6), key


def test_extra_hooks_run_every_n_steps_after_the_runs_own(tmp_path_factory):
    from transformer_jax.train.trainer import Hook

    workdir = str(tmp_path_factory.mktemp("toy_hooks"))
    seen = []

    def record(step, state):
        seen.append((step, int(jax.device_get(state.step))))

    hooks = [Hook("record", 3, record)]
    _train(workdir, tmp_path_factory, hooks=hooks, **{"train.num_steps": 7})
    assert seen == [(3, 3), (6, 6), (7, 7)]  # every 3rd step and the last; the step's own state
    # The run's own hooks ran as configured: checkpoints every 2 steps and at the end.
    steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert steps == [2, 4, 6, 7]


def test_evaluate_checkpoint_reports_the_toy_evaluator(uninterrupted):
    from transformer_jax.train.evaluation import evaluate_checkpoint

    workdir, result = uninterrupted
    out = evaluate_checkpoint(workdir, split="validation", limit=32)
    assert out["step"] == 8
    assert out["validation/exact_match"] == pytest.approx(result["validation/exact_match"])
    assert out["validation/loss"] == pytest.approx(result["validation/loss"], rel=1e-5)
    assert os.path.isfile(out["path"])


def test_the_pipeline_factory_serves_the_runs_own_task(uninterrupted):
    import transformer_jax

    workdir, _ = uninterrupted
    reverse = transformer_jax.pipeline(workdir=workdir)
    out = reverse([[1, 2, 3, 4, 5, 1]])
    assert len(out) == 1 and len(out[0]["reversed"]) == 6
    with pytest.raises(ConfigError, match="whose pipeline is .*, not 'translation'$"):
        transformer_jax.pipeline("translation", workdir=workdir)


def test_unknown_task_is_one_line_listing_the_known_ones():
    with pytest.raises(
        ConfigError,
        match=r"^config key 'task'='toy': choose one of causal_lm, classification, masked_lm, multimodal, translation",
    ):
        toy_config(task="toy")
    with pytest.raises(ConfigError, match="toy.digits"):
        toy_config(**{"toy.digits": 1})


# -- processors in checkpoints -----------------------------------------------------------------


@pytest.fixture(scope="module")
def spm_tokenizer():
    from transformer_jax.data.tokenizer import train_sentencepiece
    from transformer_jax.tasks.translation import corpus_en_es as corpus

    pairs = corpus.generate_split("train", num_examples=200)
    return train_sentencepiece([t for p in pairs for t in p], vocab_size=120)


def test_processors_round_trip_and_keep_sharing(spm_tokenizer):
    blob = processors_to_json({"src_tokenizer": spm_tokenizer, "tgt_tokenizer": spm_tokenizer})
    back = processors_from_json(blob)
    assert back["src_tokenizer"] is back["tgt_tokenizer"]
    text = "The cat sleeps on the couch."
    assert back["src_tokenizer"].encode(text) == spm_tokenizer.encode(text)
    assert processors_from_json(processors_to_json({"digits": Digits(7)}))["digits"].n == 7
    with pytest.raises(TypeError, match="register_processor"):
        processors_to_json({"x": object()})


def test_a_checkpoint_with_the_older_tokenizer_item_still_loads(spm_tokenizer, tmp_path):
    """Checkpoints written before processors had names hold one {"kind": ...} item for a
    translation run's (source, target) tokenizer pair; they restore as named processors."""
    from transformer_jax.nn.config import config_to_json
    from transformer_jax.tasks.translation.config import translation_base
    from transformer_jax.tasks.translation.model import EncoderDecoder
    from transformer_jax.train.checkpoint import Checkpointer, checkpoint_dir
    from transformer_jax.train.restore import load_for_inference

    config = TransformerConfig(
        vocab_size=spm_tokenizer.vocab_size,
        d_model=16,
        num_heads=2,
        d_ff=32,
        num_encoder_layers=1,
        num_decoder_layers=1,
    )
    ones = np.ones((1, 4), np.int32)
    params = nn.unbox(EncoderDecoder(config).init(jax.random.key(0), ones, ones)["params"])
    # The item exactly as the older code wrote it (one shared SentencePiece model).
    old_item = {
        "kind": "sentencepiece",
        "model": base64.b64encode(spm_tokenizer.to_bytes()).decode(),
    }
    workdir = str(tmp_path / "old")
    ckpt = Checkpointer(checkpoint_dir(workdir), keep=1)
    ckpt.save(
        0,
        state={"step": 0, "params": jax.device_get(params), "opt_state": {}},
        data={},
        config=translation_base().to_dict(),
        model=config_to_json(config),
        tokenizer=old_item,
        force=True,
    )
    ckpt.close()
    loaded = load_for_inference(workdir)
    src, tgt = loaded.processors["src_tokenizer"], loaded.processors["tgt_tokenizer"]
    assert src is tgt
    text = "The white houses are near the river."
    assert src.encode(text) == spm_tokenizer.encode(text)
    assert loaded.model_config == config


def test_marian_tokenizers_round_trip_in_both_item_forms(spm_tokenizer):
    """A Marian pair is stored as its two named sides; the older item (the pair, as
    `MarianTokenizer.to_json` wrote it) restores as the same two sides."""
    from transformer_jax.tasks.translation.marian import MarianTokenizer

    model = spm_tokenizer.to_bytes()
    pieces = [spm_tokenizer.id_to_piece(i) for i in range(spm_tokenizer.vocab_size)]
    vocab = {"</s>": 0, "<unk>": 1, "<pad>": 2}
    for p in pieces:
        vocab.setdefault(p, len(vocab))
    pair = MarianTokenizer(model, model, vocab)
    text = "She read a red book in the garden."
    stored = processors_to_json({"src_tokenizer": pair.source, "tgt_tokenizer": pair.target})
    assert stored["processors"]["tgt_tokenizer"]["pair"] == {"$same_as": "src_tokenizer"}
    new = processors_from_json(stored)
    old = processors_from_json(pair.to_json())
    for back in (new, old):
        assert back["src_tokenizer"].encode(text) == pair.source.encode(text)
        ids = pair.target.encode(text)
        assert back["tgt_tokenizer"].decode(ids) == pair.target.decode(ids)
        assert back["src_tokenizer"].bundle.source is back["src_tokenizer"]
        assert back["tgt_tokenizer"].bundle.target is back["tgt_tokenizer"]
