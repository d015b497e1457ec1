"""Translation: source text -> target text with the paper's encoder-decoder.

Processors: {"src_tokenizer", "tgt_tokenizer"} (one shared SentencePiece model
trained on the training split, or an imported Marian pair). Evaluator: corpus
BLEU of beam-search translations. CLI verb: `tjax translate`.
"""

from __future__ import annotations

import os
import types
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from transformer_jax.config import ConfigError
from transformer_jax.nn.config import TransformerConfig
from transformer_jax.tasks.catalog_data import CatalogData
from transformer_jax.tasks.translation import marian  # noqa: F401  (registers its tokenizers)
from transformer_jax.tasks.translation.config import (
    model_config,
    translation_base,
    validate_translation,
)
from transformer_jax.train.losses import smoothed_cross_entropy
from transformer_jax.train.task import Evaluator, Task


class TranslationTask(CatalogData, Task):
    name = "translation"
    pipeline_names = ("translation",)
    base_config_name = "translation_base()"
    eval_keys = (
        "decode.",
        "mesh.",
        "data.name",
        "data.data_dir",
        "data.src_key",
        "data.tgt_key",
        "data.eval_tokens_per_batch",
        "model.attention_impl",
        "model.dtype",
        "train.progress",
    )
    eval_options = {"decode.bleu_examples": "--limit"}

    @classmethod
    def base_config(cls) -> ml_collections.ConfigDict:
        return translation_base()

    @classmethod
    def validate_config(cls, cfg: ml_collections.ConfigDict) -> None:
        validate_translation(cfg)

    # -- data ------------------------------------------------------------------------------

    def make_processors(self, workdir: str) -> dict[str, Any]:
        """One SentencePiece model for both sides: trained on the training split, or
        read from `tokenizer.path`."""
        from transformer_jax.data.tokenizer import SentencePieceTokenizer, train_sentencepiece

        t = self.cfg.tokenizer
        if t.path:
            if not os.path.isfile(t.path):
                raise FileNotFoundError(f"tokenizer.path: no such file {t.path}")
            tok = SentencePieceTokenizer.load(t.path)
            return {"src_tokenizer": tok, "tgt_tokenizer": tok}
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
        return {"src_tokenizer": tok, "tgt_tokenizer": tok}

    def train_dataset(self, processors, shard_index: int, shard_count: int):
        from transformer_jax.data.pipeline import translation_dataset

        d = self.cfg.data
        return translation_dataset(
            self._source(d.train_split),
            src_key=d.src_key,
            tgt_key=d.tgt_key,
            src_tokenizer=processors["src_tokenizer"],
            tgt_tokenizer=processors["tgt_tokenizer"],
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

    def eval_dataset(self, processors, split: str, shard_index: int, shard_count: int):
        from transformer_jax.data.pipeline import translation_dataset

        d = self.cfg.data
        return translation_dataset(
            self._source(split),
            src_key=d.src_key,
            tgt_key=d.tgt_key,
            src_tokenizer=processors["src_tokenizer"],
            tgt_tokenizer=processors["tgt_tokenizer"],
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
        """(source, reference) texts of the first `limit` examples (0 = all) of a split."""
        from transformer_jax.data.pipeline import translation_eval_examples

        d = self.cfg.data
        return translation_eval_examples(
            self._source(split), d.src_key, d.tgt_key, limit=limit or None
        )

    # -- model -----------------------------------------------------------------------------

    def check_model_settings(self) -> None:
        """The model of the run config with a stand-in vocabulary of tokenizer.vocab_size."""
        stand_in = types.SimpleNamespace(
            vocab_size=self.cfg.tokenizer.vocab_size, pad_id=0, eos_id=1, bos_id=2
        )
        self.build_model(self.model_config({"src_tokenizer": stand_in, "tgt_tokenizer": stand_in}))

    def model_config(self, processors) -> TransformerConfig:
        src, tgt = processors["src_tokenizer"], processors["tgt_tokenizer"]
        return model_config(
            self.cfg,
            vocab_size=src.vocab_size,
            pad_id=src.pad_id,
            eos_id=src.eos_id,
            decoder_start_id=tgt.bos_id,
        )

    def model_config_from_saved(self, saved: TransformerConfig) -> TransformerConfig:
        m = self.cfg.model
        try:
            return saved.replace(
                dropout_rate=m.dropout_rate,
                dtype=jnp.dtype(m.dtype),
                remat=m.remat,
                attention_impl=m.attention_impl,
                max_position=max(saved.max_position, self.cfg.data.max_length),
            )
        except ValueError as e:  # a bad training knob: the config's, not the checkpoint's
            raise ConfigError(str(e)) from None

    def build_model(self, config: TransformerConfig) -> nn.Module:
        from transformer_jax.tasks.translation.model import EncoderDecoder

        return EncoderDecoder(config)

    def example_batch(self, config: TransformerConfig) -> dict[str, np.ndarray]:
        from transformer_jax.data.pipeline import BATCH_KEYS

        L = self.cfg.data.max_length
        return {k: np.ones((1, L), np.int32) for k in BATCH_KEYS}

    def init_variables(self, model, rng, batch) -> dict:
        return model.init(rng, batch["inputs"], batch["targets"])

    def loss(self, model, params, batch, rng):
        from transformer_jax.tasks.translation.model import emittable_tokens

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
        loss_sum, nll_sum, w, correct = smoothed_cross_entropy(
            logits_BTV,
            batch["targets"],
            _weights(batch, "targets", model.config.pad_id),
            self.cfg.train.label_smoothing,
            # Smoothing spreads over the tokens the model can emit (an import bans some).
            allowed_V=emittable_tokens(model.config, params),
        )
        metrics = {
            "loss_sum": loss_sum,
            "nll_sum": nll_sum,
            "correct_sum": correct,
            "weight_sum": w,
        }
        return loss_sum / jnp.maximum(w, 1.0), metrics

    def batch_counts(self, batch, config: TransformerConfig):
        """Non-padding source plus target tokens; encoder-decoder matmul FLOPs of the
        padded shapes."""
        from transformer_jax.train.flops import encoder_decoder_flops

        tokens = sum(
            jnp.sum(_weights(batch, side, config.pad_id)).astype(jnp.float32)
            for side in ("targets", "inputs")
        )
        B, S = batch["inputs"].shape
        flops = encoder_decoder_flops(config, B, S, batch["targets"].shape[1])
        return tokens, flops

    # -- evaluation, inference, CLI --------------------------------------------------------

    def evaluators(self) -> list[Evaluator]:
        return [BleuEvaluator(self)]

    def pipeline(self, loaded, **settings):
        from transformer_jax.tasks.translation.pipeline import TranslationPipeline

        return TranslationPipeline.from_loaded(loaded, **settings)

    def attention_view(self, loaded, text: str) -> list:
        from transformer_jax.tasks.translation.attention import translation_attention

        return translation_attention(loaded, text)

    @classmethod
    def add_cli(cls, subparsers) -> None:
        tr = subparsers.add_parser(
            "translate",
            help="translate arguments, or stdin lines (batched)",
            description="Prints one line per input line, in order; an empty line gives an "
            "empty line. Inputs longer than the run's data.max_length tokens are truncated "
            "to it.",
        )
        tr.add_argument("--workdir", required=True)
        tr.add_argument("text", nargs="*", help="sentences; none = read lines from stdin")
        tr.add_argument("--step", type=int, default=None)
        tr.add_argument("--averaged", action="store_true")
        tr.add_argument(
            "--beam-size", type=int, default=None, help="1 = greedy (default: decode.beam_size)"
        )
        tr.add_argument("--batch-size", type=int, default=None, help="default: 64")
        tr.set_defaults(fn=cmd_translate)


def _weights(batch, side: str, pad_id: int):
    """Bool [B, L]: the real (non-padding) tokens of one side of a batch."""
    seg = batch.get(f"{side}_segmentation")
    return (batch[side] != pad_id) if seg is None else seg > 0


class BleuEvaluator(Evaluator):
    """Corpus BLEU (sacreBLEU) of beam-search translations against the references."""

    name = "bleu"

    def __init__(self, task: TranslationTask):
        self.task = task

    def __call__(self, params, config, processors, split, limit):
        """Within a mesh context (`jax.sharding.get_mesh()`) the decoding is split over
        the mesh's devices, all hosts included; every host then scores all examples."""
        from transformer_jax.tasks.translation.bleu import corpus_bleu
        from transformer_jax.tasks.translation.pipeline import TranslationPipeline, decode_settings

        cfg = self.task.cfg
        limit = cfg.decode.bleu_examples if limit is None else limit
        mesh = jax.sharding.get_mesh()
        pipe = TranslationPipeline(
            params=params,
            model_config=config,
            src_tokenizer=processors["src_tokenizer"],
            tgt_tokenizer=processors["tgt_tokenizer"],
            **decode_settings(cfg),
            batch_size=cfg.decode.batch_size,
            mesh=None if mesh.empty else mesh,
        )
        pairs = self.task.eval_examples(split, limit)
        hyps = pipe.translate([s for s, _ in pairs])
        refs = [t for _, t in pairs]
        return {
            "bleu": corpus_bleu(hyps, refs),
            "examples": [
                {"source": s, "reference": r, "hypothesis": h}
                for (s, r), h in list(zip(pairs, hyps))[:5]
            ],
        }


def cmd_translate(args, extra) -> int:
    """`tjax translate`: one output line per input (arguments, or stdin lines)."""
    from transformer_jax.tasks.cli import read_texts
    from transformer_jax.tasks.translation.pipeline import TranslationPipeline
    from transformer_jax.train.paths import check_workdir
    from transformer_jax.train.task import InputError

    for option, value in (("--beam-size", args.beam_size), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise InputError(f"{option} must be >= 1, got {value}")
    check_workdir(args.workdir, write=False)
    kwargs = {}
    if args.beam_size is not None:
        kwargs["beam_size"] = args.beam_size
    if args.batch_size is not None:
        kwargs["batch_size"] = args.batch_size
    pipe = TranslationPipeline.from_workdir(
        args.workdir, step=args.step, averaged=args.averaged, **kwargs
    )
    for line in pipe.translate(read_texts(args)):
        print(line)
    return 0
