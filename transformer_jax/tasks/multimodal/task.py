"""Multimodal answering and captioning: images, audio, video and text in one model.

Processors: {"tokenizer"}: a SentencePiece model trained on the training split's prompts
and answers (or `tokenizer.path`). A row is one example: its media blocks and
`[bos] prompt answer [eos]`; the loss covers the answer and eos only.
Evaluator: greedy answers of held-out examples: exact match per question-answering task,
BLEU per captioning task, a PNG sample sheet.
CLI verb: `tjax describe`.
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
from transformer_jax.tasks.catalog_data import CatalogData
from transformer_jax.tasks.generation.task import decoder_only_flops
from transformer_jax.tasks.multimodal.config import (
    MultimodalConfig,
    from_json,
    mm_base,
    model_config,
    to_json,
    validate_mm,
)
from transformer_jax.train.losses import smoothed_cross_entropy
from transformer_jax.train.task import Evaluator, InputError, Task

_TEXT_KEYS = ("tokens", "text_mask", "prefix_len", "task_id")


def answer_targets(batch) -> tuple[jax.Array, jax.Array]:
    """(targets, weights) [B, L]: column t predicts token t + 1 when that token is part of
    the answer (or its eos), i.e. at or after the prefix."""
    ids_BL, mask_BL = batch["tokens"], batch["text_mask"]
    L = ids_BL.shape[1]
    targets_BL = jnp.concatenate([ids_BL[:, 1:], jnp.zeros_like(ids_BL[:, :1])], axis=1)
    next_real_BL = jnp.concatenate([mask_BL[:, 1:], jnp.zeros_like(mask_BL[:, :1])], axis=1)
    in_answer_BL = (jnp.arange(L)[None, :] + 1) >= batch["prefix_len"][:, None]
    return targets_BL, ((next_real_BL != 0) & in_answer_BL).astype(jnp.float32)


class MultimodalTask(CatalogData, Task):
    name = "multimodal"
    pipeline_names = ("image-text-to-text",)
    base_config_name = "mm_base()"
    eval_keys = (
        "generate.",
        "mesh.",
        "data.name",
        "data.data_dir",
        "data.format",
        "data.eval_batch_size",
        "model.attention_impl",
        "model.dtype",
        "train.progress",
    )
    eval_options = {"generate.eval_examples": "--limit"}

    @classmethod
    def base_config(cls) -> ml_collections.ConfigDict:
        return mm_base()

    @classmethod
    def validate_config(cls, cfg: ml_collections.ConfigDict) -> None:
        validate_mm(cfg)

    # -- data ------------------------------------------------------------------------------

    def make_processors(self, workdir: str) -> dict[str, Any]:
        from transformer_jax.data.tokenizer import SentencePieceTokenizer, train_sentencepiece
        from transformer_jax.tasks.multimodal.data import canonical

        t, d = self.cfg.tokenizer, self.cfg.data
        if t.path:
            if not os.path.isfile(t.path):
                raise FileNotFoundError(f"tokenizer.path: no such file {t.path}")
            return {"tokenizer": SentencePieceTokenizer.load(t.path)}
        source = self._source(d.train_split)
        n = min(len(source), t.max_train_sentences)

        def texts():
            for i in range(n):
                ex = canonical(source[i], d.format)
                yield from (s for s in (ex["prompt"], *ex["references"]) if s.strip())

        tok = train_sentencepiece(texts(), vocab_size=t.vocab_size, model_type=t.model_type)
        return {"tokenizer": tok}

    def _rows(self, total: int, shard_count: int) -> int:
        per_device = max(total // (shard_count * jax.local_device_count()), 1)
        return per_device * jax.local_device_count()

    def _dataset(self, processors, split, shard_index, shard_count, *, train: bool, limit=0):
        from transformer_jax.tasks.multimodal.data import EncodeExample, mm_dataset

        d = self.cfg.data
        config = self.model_config(processors)
        return mm_dataset(
            self._source(split),
            EncodeExample(processors["tokenizer"], config, d.max_text_length),
            fmt=d.format,
            rows=self._rows(d.batch_size if train else d.eval_batch_size, shard_count),
            shuffle=train,
            seed=self.cfg.seed,
            num_epochs=None if train else 1,
            shard_index=shard_index,
            shard_count=shard_count,
            drop_remainder=train,
            limit=limit,
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

    def model_config(self, processors) -> MultimodalConfig:
        return model_config(self.cfg, processors["tokenizer"])

    def model_config_from_saved(self, saved: MultimodalConfig) -> MultimodalConfig:
        m = self.cfg.model
        try:
            return saved.with_text(
                dropout_rate=m.dropout_rate,
                dtype=jnp.dtype(m.dtype),
                remat=m.remat,
                attention_impl=m.attention_impl,
            )
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def config_to_json(self, config: MultimodalConfig) -> dict[str, Any]:
        return to_json(config)

    def config_from_json(self, blob: dict[str, Any]) -> MultimodalConfig:
        return from_json(blob)

    def build_model(self, config: MultimodalConfig) -> nn.Module:
        from transformer_jax.tasks.multimodal.model import MultimodalModel

        return MultimodalModel(config)

    def example_batch(self, config: MultimodalConfig) -> dict[str, np.ndarray]:
        L = self.cfg.data.max_text_length
        batch = {
            "tokens": np.ones((1, L), np.int32),
            "text_mask": np.ones((1, L), np.int32),
            "prefix_len": np.ones((1,), np.int32),
            "task_id": np.zeros((1,), np.int32),
        }
        if config.max_images:
            s = config.vision.image_size
            batch["images"] = np.zeros((1, config.max_images, s, s, 3), np.uint8)
            batch["num_images"] = np.ones((1,), np.int32)
        if config.audio is not None:
            batch["audio"] = np.zeros((1, config.audio.max_samples), np.int16)
            batch["audio_samples"] = np.full((1,), config.audio.max_samples, np.int32)
        if config.video:
            v = config.vision
            batch["video"] = np.zeros((1, v.num_frames, v.image_size, v.image_size, 3), np.uint8)
            batch["num_frames"] = np.full((1,), v.num_frames, np.int32)
        return batch

    @staticmethod
    def _media(batch) -> dict[str, Any]:
        return {k: v for k, v in batch.items() if k not in _TEXT_KEYS}

    def init_variables(self, model, rng, batch) -> dict:
        variables = model.init(
            rng, batch["tokens"], batch["text_mask"], batch["prefix_len"], self._media(batch)
        )
        return self._import_encoders(model.config, variables)

    def _import_encoders(self, config: MultimodalConfig, variables: dict) -> dict:
        """Replaces the media encoders' initial weights by imported Hugging Face ones
        (`image.hf_path`, `audio.hf_path`); their shapes must match the run's encoders."""
        from transformer_jax.convert.params import flatten

        params = dict(variables["params"])
        sources = (
            ("image_encoder", self.cfg.image.hf_path, "hf_vit", "import_vit"),
            ("audio_encoder", self.cfg.audio.hf_path, "hf_whisper", "import_whisper_encoder"),
        )
        for name, path, module, fn in sources:
            if not path or name not in params:
                continue
            import importlib

            group = name.split("_")[0]
            mod = importlib.import_module(f"transformer_jax.tasks.multimodal.{module}")
            try:
                hf_config, imported = getattr(mod, fn)(path)
            except (OSError, ValueError) as e:
                raise ConfigError(f"{group}.hf_path={path!r}: {e}") from None
            _check_hf_sizes(group, self.cfg[group], hf_config, path)
            ours, theirs = flatten(nn.unbox(params[name])), flatten(imported)
            for key in sorted(set(ours) | set(theirs)):
                a, b = ours.get(key), theirs.get(key)
                if a is None or b is None or tuple(a.shape) != tuple(np.shape(b)):
                    raise ConfigError(
                        f"{path}: its {'/'.join(key)} {None if b is None else np.shape(b)} does "
                        f"not fit this run's {name} ({None if a is None else a.shape}); set "
                        f"the {name.split('_')[0]}.* keys to the imported model's sizes"
                    )
            params[name] = jax.tree.map(_put, params[name], imported, is_leaf=_boxed)
        return {**variables, "params": params}

    def loss(self, model, params, batch, rng):
        """Cross entropy of the answer tokens (and eos) given the media and the prompt."""
        logits_BLV = model.apply(
            {"params": params},
            batch["tokens"],
            batch["text_mask"],
            batch["prefix_len"],
            self._media(batch),
            rngs={"dropout": rng},
        )
        targets_BL, weights_BL = answer_targets(batch)
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

    def batch_counts(self, batch, config: MultimodalConfig):
        from transformer_jax.tasks.multimodal.model import encoder_flops, media_columns

        tokens = jnp.sum(batch["text_mask"] != 0).astype(jnp.float32)
        B, L = batch["tokens"].shape
        M = media_columns(config)
        # Logits are computed over the text columns only; the media stack has none.
        if config.fusion == "prefix":
            flops = decoder_only_flops(config.text, B, M + L, logit_length=L)
        else:
            enc = config.text.replace(num_decoder_layers=config.fusion_layers)
            flops = decoder_only_flops(config.text, B, L) + decoder_only_flops(
                enc, B, M, logit_length=0
            )
        return tokens, flops + encoder_flops(config, B)

    # -- evaluation, inference, CLI --------------------------------------------------------

    def evaluators(self) -> list[Evaluator]:
        return [AnswerEvaluator(self)]

    def pipeline(self, loaded, **settings):
        from transformer_jax.tasks.multimodal.pipeline import ImageTextToTextPipeline

        return ImageTextToTextPipeline.from_loaded(loaded, **settings)

    @classmethod
    def add_cli(cls, subparsers) -> None:
        p = subparsers.add_parser(
            "describe",
            help="answer a question about images, audio and video (or caption them)",
            description="Answers the prompt (none: a caption) about the given media with a "
            "trained multimodal run. Images: PNG/JPEG/... (any mode: converted to RGB, "
            "centre-cropped and resized); audio: WAV/FLAC/OGG (down-mixed to mono, "
            "resampled to 16 kHz); video: a video file or a folder of frames (frames "
            "sampled uniformly). --image may be repeated.",
        )
        p.add_argument("--workdir", required=True)
        p.add_argument("text", nargs="?", default="", help="the question ('' = a caption)")
        p.add_argument("--image", action="append", default=[], help="image file (repeatable)")
        p.add_argument("--audio", default=None, help="audio file (default: none)")
        p.add_argument("--video", default=None, help="video file or frames folder (default: none)")
        p.add_argument("--step", type=int, default=None)
        p.add_argument("--averaged", action="store_true")
        p.add_argument("--max-new-tokens", type=int, default=None, help="default: the run's")
        p.add_argument("--json", action="store_true", help="Hugging Face's output as JSON")
        p.set_defaults(fn=cmd_describe)


def _check_hf_sizes(group: str, run, imported, path: str) -> None:
    """One line naming the first `image.*` / `audio.*` key that differs from the size of
    the imported encoder (`imported`: its VisionConfig / AudioConfig)."""
    s = imported.stack
    want = {
        "d_model": s.d_model,
        "num_heads": s.num_heads,
        "d_ff": s.d_ff,
        "num_layers": s.num_encoder_layers,
    }
    if group == "image":
        want.update(
            image_size=imported.image_size,
            patch_size=imported.patch_size,
            cls_token=imported.cls_token,
            positions=imported.positions,
        )
    else:
        want.update(n_mels=imported.n_mels, max_positions=imported.max_positions)
    for key, value in want.items():
        if run[key] != value:
            raise ConfigError(
                f"{group}.hf_path={path!r} holds an encoder with {group}.{key}={value!r}, "
                f"this run has {run[key]!r}: set {group}.{key}={value!r}"
            )


def _boxed(x) -> bool:
    return isinstance(x, nn.meta.AxisMetadata)


def _put(old, new):
    """`new`'s values in `old`'s place (keeping its sharding annotation and dtype)."""
    if _boxed(old):
        return old.replace_boxed(jnp.asarray(new, old.unbox().dtype))
    return jnp.asarray(new, old.dtype)


class AnswerEvaluator(Evaluator):
    """Greedy answers over a split: exact match per question task and overall
    ("answer_match"), corpus BLEU per captioning task, a PNG sample sheet."""

    name = "answer_match"

    def __init__(self, task: MultimodalTask):
        self.task = task

    def __call__(self, params, config, processors, split, limit):
        import sacrebleu

        from transformer_jax.tasks.multimodal.data import canonical, usable
        from transformer_jax.tasks.multimodal.pipeline import ImageTextToTextPipeline

        cfg = self.task.cfg
        n_max = cfg.generate.eval_examples if limit is None else limit
        source = self.task._source(split)
        examples = []
        for i in range(len(source)):
            if n_max and len(examples) >= n_max:
                break
            ex = canonical(source[i], cfg.data.format)
            if usable(config, ex["task"]):
                examples.append(ex)
        pipe = ImageTextToTextPipeline(
            params,
            config,
            processors["tokenizer"],
            max_text_length=cfg.data.max_text_length,
            max_new_tokens=cfg.generate.max_new_tokens,
            batch_size=cfg.generate.batch_size,
        )
        hyps = pipe.answer_examples(examples)
        out: dict[str, Any] = {}
        by_task: dict[str, list[int]] = {}
        for i, ex in enumerate(examples):
            by_task.setdefault(ex["task"], []).append(i)
        qa_hits = []
        for task, idx in sorted(by_task.items()):
            if task.endswith("_qa"):
                hits = [hyps[i] == examples[i]["answer"].strip() for i in idx]
                qa_hits += hits
                out[f"{task}_match"] = float(np.mean(hits))
            else:
                refs = [examples[i]["references"] for i in idx]
                width = max(len(r) for r in refs)
                streams = [[r[k] if k < len(r) else r[0] for r in refs] for k in range(width)]
                bleu = sacrebleu.corpus_bleu([hyps[i] for i in idx], streams)
                out[f"{task}_bleu"] = float(bleu.score)
        out[self.name] = float(np.mean(qa_hits)) if qa_hits else 0.0
        shown = _spread(examples, by_task, 3)
        sheet = [_sheet_row(examples[i], hyps[i], config) for i in shown]
        out["examples"] = [
            {"source": f"[{examples[i]['task']}] {examples[i]['prompt']}",
             "reference": examples[i]["answer"], "hypothesis": hyps[i]}
            for i in shown
        ]  # fmt: skip
        out["files"] = {"samples.png": _sheet_png(sheet)}
        return out


def _spread(examples, by_task, per_task: int) -> list[int]:
    return [i for _, idx in sorted(by_task.items()) for i in idx[:per_task]]


def _sheet_row(ex, hyp: str, config: MultimodalConfig) -> dict[str, Any]:
    row = {"task": ex["task"], "prompt": ex["prompt"], "reference": ex["answer"], "hypothesis": hyp}
    if int(ex.get("num_images", 0)):
        row["images"] = np.asarray(ex["images"])[: int(ex["num_images"])]
    if int(ex.get("audio_samples", 0)) and config.audio is not None:
        from transformer_jax.tasks.multimodal.audio import log_mel

        n = min(int(ex["audio_samples"]), config.audio.max_samples)
        wave = np.asarray(ex["audio"])[:n].astype(np.float32)[None] / 32768.0
        mel, _ = log_mel(jnp.asarray(wave), jnp.asarray([n]), config.audio.n_mels)
        row["audio_mel"] = np.asarray(mel[0])
    if int(ex.get("num_frames", 0)):
        row["video"] = np.asarray(ex["video"])[: int(ex["num_frames"])]
    return row


def _sheet_png(rows) -> bytes:
    import tempfile

    from transformer_jax.tasks.multimodal.sheet import sample_sheet

    with tempfile.TemporaryDirectory() as tmp:
        path = sample_sheet(rows, os.path.join(tmp, "samples.png"))
        with open(path, "rb") as f:
            return f.read()


# -- CLI -----------------------------------------------------------------------------------


def cmd_describe(args, extra) -> int:
    """`tjax describe`: one answer for the given prompt and media."""
    import json

    from transformer_jax.tasks.cli import load_run
    from transformer_jax.tasks.multimodal.pipeline import ImageTextToTextPipeline

    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    item: dict[str, Any] = {"text": args.text}
    if args.image:
        item["images"] = list(args.image)
    if args.audio:
        item["audio"] = args.audio
    if args.video:
        item["video"] = args.video
    settings = {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}
    loaded = load_run(args, "describe", ("multimodal",))
    pipe = ImageTextToTextPipeline.from_loaded(loaded, **settings)
    out = pipe(item)
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
    else:
        print(out[0]["generated_text"])
    return 0


__all__ = ["AnswerEvaluator", "MultimodalTask", "answer_targets"]
