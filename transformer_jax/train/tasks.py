"""Tasks plug their data, model and loss into the one trainer.

A task answers: which tokenizers, which model, which batches, which loss, and
which quality metric. The trainer owns everything else (sharding, the step,
checkpoints, logging). Classification, generation and multimodal tasks are
further subclasses of `Task`.
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from transformer_jax.config import model_config
from transformer_jax.nn.config import TransformerConfig
from transformer_jax.train.losses import smoothed_cross_entropy


class Task:
    """The interface the trainer relies on."""

    name: str = ""
    metric_name: str = ""

    def __init__(self, cfg: ml_collections.ConfigDict):
        self.cfg = cfg

    def check_data(self) -> None:
        """Raises a one-line ValueError when the configured dataset cannot be found."""

    def make_tokenizers(self, workdir: str):
        raise NotImplementedError

    def model_config(self, src_tok, tgt_tok) -> TransformerConfig:
        raise NotImplementedError

    def build_model(self, config: TransformerConfig) -> nn.Module:
        raise NotImplementedError

    def dummy_batch(self, config: TransformerConfig) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def init_variables(self, model: nn.Module, rng, batch) -> dict:
        raise NotImplementedError

    def loss(self, model, params, batch, rng) -> tuple[jax.Array, dict[str, jax.Array]]:
        raise NotImplementedError

    def train_dataset(self, src_tok, tgt_tok, shard_index: int, shard_count: int):
        raise NotImplementedError

    def eval_dataset(self, src_tok, tgt_tok, split: str, shard_index: int, shard_count: int):
        raise NotImplementedError

    def quality(self, params, config, src_tok, tgt_tok, split: str, limit: int) -> dict[str, Any]:
        raise NotImplementedError


class TranslationTask(Task):
    name = "translation"
    metric_name = "bleu"

    # -- data ------------------------------------------------------------------------------

    def _source(self, split: str):
        from transformer_jax.data import catalog

        d = self.cfg.data
        # Generates this package's datasets on first use; others must be prepared.
        return catalog.data_source(d.name, split, d.data_dir or None)

    def check_data(self) -> None:
        from transformer_jax.data import catalog

        catalog.builder(self.cfg.data.name, self.cfg.data.data_dir or None)

    def make_tokenizers(self, workdir: str):
        from transformer_jax.data.tokenizer import SentencePieceTokenizer, train_sentencepiece

        t = self.cfg.tokenizer
        if t.path:
            if not os.path.isfile(t.path):
                raise FileNotFoundError(f"tokenizer.path: no such file {t.path}")
            tok = SentencePieceTokenizer.load(t.path)
            return tok, tok
        d = self.cfg.data
        source = self._source(d.train_split)
        n = min(len(source), t.max_train_sentences)

        def texts():
            for i in range(n):
                ex = source[i]
                for key in (d.src_key, d.tgt_key):
                    value = ex[key]
                    yield value.decode("utf-8") if isinstance(value, bytes) else value

        tok = train_sentencepiece(texts(), vocab_size=t.vocab_size, model_type=t.model_type)
        return tok, tok

    def train_dataset(self, src_tok, tgt_tok, shard_index: int, shard_count: int):
        from transformer_jax.data.pipeline import translation_dataset

        d = self.cfg.data
        return translation_dataset(
            self._source(d.train_split),
            src_key=d.src_key,
            tgt_key=d.tgt_key,
            src_tokenizer=src_tok,
            tgt_tokenizer=tgt_tok,
            max_length=d.max_length,
            tokens_per_batch=d.tokens_per_batch // shard_count,
            batching=d.batching,
            shuffle=True,
            seed=self.cfg.seed,
            num_epochs=None,
            shard_index=shard_index,
            shard_count=shard_count,
            # Rows are split over this host's devices (e.g. 50000 // 256 = 195 -> 192 on 8).
            batch_size_multiple=jax.local_device_count(),
        )

    def eval_dataset(self, src_tok, tgt_tok, split: str, shard_index: int, shard_count: int):
        from transformer_jax.data.pipeline import translation_dataset

        d = self.cfg.data
        return translation_dataset(
            self._source(split),
            src_key=d.src_key,
            tgt_key=d.tgt_key,
            src_tokenizer=src_tok,
            tgt_tokenizer=tgt_tok,
            max_length=d.max_length,
            tokens_per_batch=d.eval_tokens_per_batch // shard_count,
            batching="pad",
            shuffle=False,
            num_epochs=1,
            shard_index=shard_index,
            shard_count=shard_count,
            drop_remainder=False,
        )

    def eval_examples(self, split: str, limit: int) -> list[tuple[str, str]]:
        from transformer_jax.data.pipeline import translation_eval_examples

        d = self.cfg.data
        return translation_eval_examples(
            self._source(split), d.src_key, d.tgt_key, limit=limit or None
        )

    # -- model -----------------------------------------------------------------------------

    def model_config(self, src_tok, tgt_tok) -> TransformerConfig:
        return model_config(
            self.cfg,
            vocab_size=src_tok.vocab_size,
            pad_id=src_tok.pad_id,
            eos_id=src_tok.eos_id,
            decoder_start_id=tgt_tok.bos_id,
        )

    def build_model(self, config: TransformerConfig) -> nn.Module:
        from transformer_jax.models.translation import EncoderDecoder

        return EncoderDecoder(config)

    def dummy_batch(self, config: TransformerConfig) -> dict[str, np.ndarray]:
        L = self.cfg.data.max_length
        ones = np.ones((1, L), np.int32)
        return {"inputs": ones, "targets": ones}

    def init_variables(self, model, rng, batch) -> dict:
        return model.init(rng, batch["inputs"], batch["targets"])

    def loss(self, model, params, batch, rng):
        from transformer_jax.models.translation import emittable_tokens

        logits_BTV = model.apply(
            {"params": params},
            batch["inputs"],
            batch["targets"],
            inputs_segmentation=batch.get("inputs_segmentation"),
            targets_segmentation=batch.get("targets_segmentation"),
            inputs_position=batch.get("inputs_position"),
            targets_position=batch.get("targets_position"),
            rngs={"dropout": rng},
        )
        seg = batch.get("targets_segmentation")
        weights_BT = (batch["targets"] != model.config.pad_id) if seg is None else seg > 0
        loss_sum, nll_sum, w, correct = smoothed_cross_entropy(
            logits_BTV,
            batch["targets"],
            weights_BT,
            self.cfg.train.label_smoothing,
            # Smoothing spreads over the tokens the model can emit (an import bans some).
            allowed_V=emittable_tokens(model.config, params),
        )
        src_seg = batch.get("inputs_segmentation")
        src_tokens = jnp.sum(
            (batch["inputs"] != model.config.pad_id) if src_seg is None else src_seg > 0
        )
        metrics = {
            "loss_sum": loss_sum,
            "nll_sum": nll_sum,
            "correct_sum": correct,
            "weight_sum": w,
            "src_tokens": src_tokens.astype(jnp.float32),
        }
        return loss_sum / jnp.maximum(w, 1.0), metrics

    # -- quality ---------------------------------------------------------------------------

    def quality(self, params, config, src_tok, tgt_tok, split: str, limit: int) -> dict[str, Any]:
        """Corpus BLEU of the first `limit` examples (0 = all) of a split.

        Within a mesh context (`jax.sharding.get_mesh()`) the decoding is split
        over the mesh's devices, all hosts included; every host then scores all
        examples and returns the same result.
        """
        from transformer_jax.evaluate.bleu import corpus_bleu
        from transformer_jax.pipelines import TranslationPipeline
        from transformer_jax.train.restore import decode_settings

        dec = self.cfg.decode
        mesh = jax.sharding.get_mesh()
        pipe = TranslationPipeline(
            params=params,
            model_config=config,
            src_tokenizer=src_tok,
            tgt_tokenizer=tgt_tok,
            **decode_settings(self.cfg),
            batch_size=dec.batch_size,
            mesh=None if mesh.empty else mesh,
        )
        pairs = self.eval_examples(split, limit)
        hyps = pipe.translate([s for s, _ in pairs])
        refs = [t for _, t in pairs]
        return {
            "bleu": corpus_bleu(hyps, refs),
            "examples": [
                {"source": s, "reference": r, "hypothesis": h}
                for (s, r), h in list(zip(pairs, hyps))[:5]
            ],
        }


TASKS = {"translation": TranslationTask}


def make_task(cfg: ml_collections.ConfigDict) -> Task:
    return TASKS[cfg.task](cfg)
