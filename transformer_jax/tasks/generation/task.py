"""Causal language modelling with a GPT- or Llama-style decoder-only Transformer.

Processors: {"tokenizer"}: a SentencePiece model trained on the training split (or read
from `tokenizer.path`), or an imported Hugging Face tokenizer. Training rows pack
documents ([bos] text [eos]) with segment ids; the eval loss gives the perplexity.
Evaluator: greedy continuation of held-out documents (exact match of their second half).
CLI verb: `tjax generate`.
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
from transformer_jax.data import hf_tokenizer as _hf_tokenizer  # noqa: F401 (registers its kind)
from transformer_jax.nn.config import TransformerConfig
from transformer_jax.tasks.catalog_data import CatalogData
from transformer_jax.tasks.generation.config import lm_base, model_config, validate_lm
from transformer_jax.train.losses import smoothed_cross_entropy
from transformer_jax.train.task import Evaluator, InputError, Task


def next_token_targets(batch) -> tuple[jax.Array, jax.Array]:
    """(targets, weights) [B, L]: token t predicts token t + 1 of its own document."""
    ids_BL, seg_BL = batch["inputs"], batch["segment_ids"]
    targets_BL = jnp.concatenate([ids_BL[:, 1:], jnp.zeros_like(ids_BL[:, :1])], axis=1)
    next_seg_BL = jnp.concatenate([seg_BL[:, 1:], jnp.zeros_like(seg_BL[:, :1])], axis=1)
    weights_BL = ((seg_BL != 0) & (next_seg_BL == seg_BL)).astype(jnp.float32)
    return targets_BL, weights_BL


def decoder_only_flops(
    config: TransformerConfig, batch: int, length: int, logit_length: int | None = None
) -> float:
    """Matmul FLOPs of one training step (forward x3) over [batch, length] tokens, with
    the output projection over the last `logit_length` columns (default: all)."""
    D, F, V = config.d_model, config.d_ff, config.vocab_size
    NH = config.num_heads * config.dim_per_head
    KH = config.kv_heads * config.dim_per_head
    gated = 3 if config.activation.endswith("glu") else 2
    per_token = (
        2 * D * (2 * NH + 2 * KH)  # q, o, k, v
        + 2 * 2 * length * NH  # QK^T and AV (counted dense)
        + 2 * gated * D * F
    )
    logit_length = length if logit_length is None else logit_length
    fwd = batch * (length * per_token * config.num_decoder_layers + logit_length * 2 * D * V)
    return float(3 * fwd)


class CausalLMTask(CatalogData, Task):
    name = "causal_lm"
    pipeline_names = ("text-generation",)
    base_config_name = "lm_base()"
    eval_keys = (
        "generate.",
        "mesh.",
        "data.name",
        "data.data_dir",
        "data.text_key",
        "data.eval_batch_size",
        "data.max_length",
        "model.attention_impl",
        "model.dtype",
        "train.progress",
    )
    eval_options = {"generate.eval_examples": "--limit"}

    @classmethod
    def base_config(cls) -> ml_collections.ConfigDict:
        return lm_base()

    @classmethod
    def validate_config(cls, cfg: ml_collections.ConfigDict) -> None:
        validate_lm(cfg)

    # -- data ------------------------------------------------------------------------------

    def make_processors(self, workdir: str) -> dict[str, Any]:
        """A SentencePiece model trained on the training split (or `tokenizer.path`)."""
        from transformer_jax.data.pipeline import _text
        from transformer_jax.data.tokenizer import SentencePieceTokenizer, train_sentencepiece

        t, d = self.cfg.tokenizer, self.cfg.data
        if t.path:
            if not os.path.isfile(t.path):
                raise FileNotFoundError(f"tokenizer.path: no such file {t.path}")
            return {"tokenizer": SentencePieceTokenizer.load(t.path)}
        source = self._source(d.train_split)
        n = min(len(source), t.max_train_sentences)
        texts = (_text(source[i][d.text_key]) for i in range(n))
        tok = train_sentencepiece(texts, vocab_size=t.vocab_size, model_type=t.model_type)
        return {"tokenizer": tok}

    def _rows(self, total: int, shard_count: int) -> int:
        per_device = max(total // (shard_count * jax.local_device_count()), 1)
        return per_device * jax.local_device_count()

    def _dataset(self, processors, split, shard_index, shard_count, *, train: bool):
        from transformer_jax.tasks.generation.data import EncodeDocument, lm_dataset

        d = self.cfg.data
        return lm_dataset(
            self._source(split),
            EncodeDocument(processors["tokenizer"], d.text_key),
            max_length=d.max_length,
            rows=self._rows(d.batch_size if train else d.eval_batch_size, shard_count),
            shuffle=train,
            seed=self.cfg.seed,
            num_epochs=None if train else 1,
            shard_index=shard_index,
            shard_count=shard_count,
            drop_remainder=train,
        )

    def train_dataset(self, processors, shard_index: int, shard_count: int):
        d = self.cfg.data
        return self._dataset(processors, d.train_split, shard_index, shard_count, train=True)

    def eval_dataset(self, processors, split: str, shard_index: int, shard_count: int):
        return self._dataset(processors, split, shard_index, shard_count, train=False)

    # -- model -----------------------------------------------------------------------------

    def check_model_settings(self) -> None:
        stand_in = types.SimpleNamespace(
            vocab_size=self.cfg.tokenizer.vocab_size, bos_id=2, eos_id=1, pad_id=0
        )
        self.build_model(model_config(self.cfg, stand_in))

    def model_config(self, processors) -> TransformerConfig:
        return model_config(self.cfg, processors["tokenizer"])

    def model_config_from_saved(self, saved: TransformerConfig) -> TransformerConfig:
        """An imported (or pre-trained) model's architecture with this run's training knobs."""
        m = self.cfg.model
        try:
            return saved.replace(
                dropout_rate=m.dropout_rate,
                dtype=jnp.dtype(m.dtype),
                remat=m.remat,
                attention_impl=m.attention_impl,
                scan_layers=m.scan_layers,
            )
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def build_model(self, config: TransformerConfig) -> nn.Module:
        from transformer_jax.nn.lm import CausalLM

        return CausalLM(config)

    def example_batch(self, config: TransformerConfig) -> dict[str, np.ndarray]:
        L = self.cfg.data.max_length
        return {key: np.ones((1, L), np.int32) for key in ("inputs", "segment_ids", "positions")}

    def init_variables(self, model, rng, batch) -> dict:
        return model.init(
            rng, batch["inputs"], segment_ids=batch["segment_ids"], positions=batch["positions"]
        )

    def loss(self, model, params, batch, rng):
        """Next-token cross entropy within each packed document."""
        logits_BLV = model.apply(
            {"params": params},
            batch["inputs"],
            segment_ids=batch["segment_ids"],
            positions=batch["positions"],
            rngs={"dropout": rng},
        )
        targets_BL, weights_BL = next_token_targets(batch)
        loss_sum, nll_sum, w, correct = smoothed_cross_entropy(
            logits_BLV, targets_BL, weights_BL, self.cfg.train.label_smoothing
        )
        metrics = {
            "loss_sum": loss_sum,
            "nll_sum": nll_sum,
            "correct_sum": correct,
            "weight_sum": w,
        }
        return loss_sum / jnp.maximum(w, 1.0), metrics

    def batch_counts(self, batch, config: TransformerConfig):
        tokens = jnp.sum(batch["segment_ids"] != 0).astype(jnp.float32)
        B, L = batch["inputs"].shape
        return tokens, decoder_only_flops(config, B, L)

    # -- evaluation, inference, CLI --------------------------------------------------------

    def evaluators(self) -> list[Evaluator]:
        if not self.cfg.generate.eval_examples:
            return []
        return [ContinuationEvaluator(self)]

    def pipeline(self, loaded, **settings):
        from transformer_jax.tasks.generation.pipeline import TextGenerationPipeline

        return TextGenerationPipeline.from_loaded(loaded, **settings)

    def attention_view(self, loaded, text: str) -> list:
        from transformer_jax.tasks.generation.attention import lm_attention

        return lm_attention(loaded, text)

    @classmethod
    def add_cli(cls, subparsers) -> None:
        g = lm_base().generate
        p = subparsers.add_parser(
            "generate",
            help="continue prompts given as arguments, or stdin lines (batched)",
            description="Continues each prompt (greedy unless --temperature > 0 or "
            "--num-beams > 1) and prints prompt + continuation, one block per prompt "
            '(--json: Hugging Face\'s [{"generated_text": ...}] per prompt, one line each). '
            "A prompt longer than the model's context loses its beginning (a warning on "
            "stderr; --truncation error refuses it). An empty prompt starts from the bos "
            "token. Defaults are the run's generate.* settings.",
        )
        p.add_argument("--workdir", required=True)
        p.add_argument("text", nargs="*", help="prompts; none = read lines from stdin")
        p.add_argument("--step", type=int, default=None)
        p.add_argument("--averaged", action="store_true")
        p.add_argument(
            "--max-new-tokens", type=int, default=None, help=f"default {g.max_new_tokens}"
        )
        p.add_argument("--temperature", type=float, default=None, help="0 = greedy (default)")
        p.add_argument("--top-k", type=int, default=None, help="0 = off (default)")
        p.add_argument("--top-p", type=float, default=None, help="in (0, 1]; 1 = off (default)")
        p.add_argument("--repetition-penalty", type=float, default=None, help="1 = off (default)")
        p.add_argument("--stop", action="append", default=None, help="repeatable (default none)")
        p.add_argument("--num-return-sequences", type=int, default=None, help="default 1")
        p.add_argument("--seed", type=int, default=None, help="sampling seed, default 0")
        p.add_argument("--num-beams", type=int, default=None, help="> 1: beam search (default 1)")
        p.add_argument("--length-penalty", type=float, default=None, help="beam search, default 1")
        p.add_argument(
            "--length-penalty-type", choices=("hf", "gnmt"), default=None, help="default hf"
        )
        p.add_argument(
            "--truncation", choices=("left", "error"), default=None, help=f"default {g.truncation}"
        )
        p.add_argument("--batch-size", type=int, default=None, help=f"default {g.batch_size}")
        p.add_argument("--json", action="store_true", help="JSON output, one line per prompt")
        p.set_defaults(fn=cmd_generate)


class ContinuationEvaluator(Evaluator):
    """Greedy continuation of the first half (by words) of held-out documents; the exact
    match of the generated text with the second half, and a few examples."""

    name = "continuation_match"

    def __init__(self, task: CausalLMTask):
        self.task = task

    def __call__(self, params, config, processors, split, limit):
        from transformer_jax.data.pipeline import _text
        from transformer_jax.tasks.generation.pipeline import TextGenerationPipeline

        cfg = self.task.cfg
        n_max = cfg.generate.eval_examples if limit is None else limit
        source = self.task._source(split)
        n = len(source) if not n_max else min(n_max, len(source))
        prompts, references = [], []
        for i in range(n):
            words = _text(source[i][cfg.data.text_key]).split(" ")
            cut = max(len(words) // 2, 1)
            prompts.append(" ".join(words[:cut]))
            references.append(" ".join(words[cut:]))
        tok = processors["tokenizer"]
        longest = max((len(tok.encode(r)) for r in references), default=1)
        pipe = TextGenerationPipeline(params, config, tok, settings=dict(cfg.generate))
        outs = pipe(
            prompts,
            max_new_tokens=longest + 2,
            temperature=0.0,
            num_beams=1,
            num_return_sequences=1,
            return_full_text=False,
        )
        hyps = [o[0]["generated_text"].strip() for o in outs]
        match = [h == r.strip() for h, r in zip(hyps, references)]
        return {
            self.name: float(np.mean(match)) if match else 0.0,
            "examples": [
                {"source": p, "reference": r, "hypothesis": h}
                for p, r, h in list(zip(prompts, references, hyps))[:5]
            ],
        }


# -- CLI -----------------------------------------------------------------------------------

_OPTIONS = (
    "max_new_tokens",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "num_return_sequences",
    "seed",
    "num_beams",
    "length_penalty",
    "length_penalty_type",
    "truncation",
    "batch_size",
)


def cmd_generate(args, extra) -> int:
    """`tjax generate`: prompt + continuation per prompt, in order."""
    import json

    from transformer_jax.tasks.cli import load_run, read_texts
    from transformer_jax.tasks.generation.pipeline import TextGenerationPipeline

    options = {k: getattr(args, k) for k in _OPTIONS if getattr(args, k) is not None}
    if args.stop is not None:
        options["stop"] = json.dumps(args.stop)
    loaded = load_run(args, "generate", ("causal_lm",))
    pipe = TextGenerationPipeline.from_loaded(loaded, **options)
    for outs in pipe(read_texts(args)):
        if args.json:
            print(json.dumps(outs, ensure_ascii=False))
        else:
            print("\n---\n".join(o["generated_text"] for o in outs))
    return 0


__all__ = ["CausalLMTask", "ContinuationEvaluator", "InputError", "next_token_targets"]
