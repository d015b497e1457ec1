"""Text classification and masked-LM pre-training with a BERT/RoBERTa-style encoder.

Processors: {"tokenizer", "labels"} for classification ({"tokenizer"} for the masked
LM): a SentencePiece model with a "<mask>" piece trained on the training split (or an
imported Hugging Face tokenizer), and the label names in the head's order.

Evaluators: accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix
(classification); the masked LM's eval loss reports masked-token accuracy.
CLI verbs: `tjax classify`, `tjax fill-mask`.
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
import optax

from transformer_jax.config import ConfigError
from transformer_jax.tasks.catalog_data import CatalogData
from transformer_jax.tasks.classification.config import (
    class_weights,
    classification_base,
    config_from_json,
    config_to_json,
    masked_lm_base,
    model_config,
    parse_names,
    validate_classification,
)
from transformer_jax.tasks.classification.model import EncoderModelConfig
from transformer_jax.tasks.classification.text import MASK_PIECE, LabelMap, specials
from transformer_jax.tasks.cli import load_run, read_texts
from transformer_jax.train.task import Evaluator, InputError, Task


class ClassificationTask(CatalogData, Task):
    name = "classification"
    pipeline_names = ("text-classification",)
    base_config_name = "classification_base()"
    eval_keys = (
        "classify.",
        "mesh.",
        "data.name",
        "data.data_dir",
        "data.text_key",
        "data.label_key",
        "data.eval_batch_size",
        "model.attention_impl",
        "model.dtype",
        "train.progress",
    )
    eval_options = {"classify.eval_examples": "--limit"}
    mlm_head = False

    @classmethod
    def base_config(cls) -> ml_collections.ConfigDict:
        return classification_base()

    @classmethod
    def validate_config(cls, cfg: ml_collections.ConfigDict) -> None:
        validate_classification(cfg)

    # -- data ------------------------------------------------------------------------------

    def label_map(self) -> LabelMap:
        """`data.labels`, else the dataset's ClassLabel names (none for regression)."""
        d, kind = self.cfg.data, self.cfg.head.problem_type
        names = parse_names(d.labels)
        if kind != "regression":
            theirs = self._dataset_label_names()
            unlisted = [n for n in theirs if n not in names]
            if names and unlisted:
                raise ConfigError(
                    f"config key 'data.labels'={d.labels!r} does not list the label(s) "
                    f"{unlisted} of {d.name}'s {d.label_key!r} feature"
                )
            names = names or theirs
        if not names and kind != "regression":
            raise ConfigError(
                f"config key 'data.labels' is empty and {d.name}'s {d.label_key!r} feature "
                "has no class names: list the labels, e.g. --config.data.labels=NEG,POS"
            )
        try:
            labels = LabelMap(tuple(names), kind)
        except ValueError as e:
            raise ConfigError(f"config key 'data.labels': {e}") from None
        weights = class_weights(self.cfg)
        if weights and len(weights) != labels.num_labels:
            raise ConfigError(
                f"config key 'head.class_weights' has {len(weights)} weights for "
                f"{labels.num_labels} labels {list(labels.names)}"
            )
        return labels

    def _dataset_label_names(self) -> list[str]:
        import tensorflow_datasets as tfds

        from transformer_jax.data import catalog

        d = self.cfg.data
        feature = catalog.builder(d.name, d.data_dir or None).info.features[d.label_key]
        while isinstance(feature, tfds.features.Sequence):  # multi-label: a list of names
            feature = feature.feature
        return list(getattr(feature, "names", None) or [])

    def make_processors(self, workdir: str) -> dict[str, Any]:
        """A SentencePiece model with a "<mask>" piece, trained on the training split (or
        read from `tokenizer.path`), and the label map."""
        from transformer_jax.data.pipeline import _text
        from transformer_jax.data.tokenizer import SentencePieceTokenizer, train_sentencepiece

        t, d = self.cfg.tokenizer, self.cfg.data
        if t.path:
            if not os.path.isfile(t.path):
                raise FileNotFoundError(f"tokenizer.path: no such file {t.path}")
            tok = SentencePieceTokenizer.load(t.path)
        else:
            source = self._source(d.train_split)
            n = min(len(source), t.max_train_sentences)
            texts = (_text(source[i][d.text_key]) for i in range(n))
            tok = train_sentencepiece(
                texts,
                vocab_size=t.vocab_size,
                model_type=t.model_type,
                user_defined_symbols=(MASK_PIECE,),
            )
        out = {"tokenizer": tok}
        if not self.mlm_head:
            out["labels"] = self.label_map()
        return out

    def adopt_processors(self, processors: dict[str, Any]) -> dict[str, Any]:
        """A pre-trained encoder's tokenizer, with this run's labels when it has none;
        a classifier's labels must be this run's."""
        if self.mlm_head:
            return {k: v for k, v in processors.items() if k != "labels"}
        labels = self.label_map()
        theirs = processors.get("labels")
        if theirs is not None and theirs.names and theirs != labels:
            raise ConfigError(
                f"the checkpoint's head predicts {list(theirs.names)} ({theirs.problem_type}), "
                f"this run's labels are {list(labels.names)} ({labels.problem_type}): set "
                "data.labels to the checkpoint's, or start from an encoder without a head"
            )
        return {**processors, "labels": labels}

    def id_names(self, labels: LabelMap) -> list[str] | None:
        """The dataset's names of its label ids when they are not the head's order
        (`data.labels` listing them otherwise): ids are then read by name."""
        if self.mlm_head or labels.problem_type == "regression":
            return None
        theirs = self._dataset_label_names()
        return theirs if theirs and tuple(theirs) != labels.names else None

    def _encode(self, processors, with_labels: bool = True):
        from transformer_jax.tasks.classification.data import Encode

        d = self.cfg.data
        labels = processors.get("labels") if with_labels and not self.mlm_head else None
        return Encode(
            processors["tokenizer"],
            text_key=d.text_key,
            max_length=d.max_length,
            label_key=d.label_key if with_labels and not self.mlm_head else None,
            labels=labels,
            id_names=None if labels is None else self.id_names(labels),
            with_word_starts=self.mlm_head,
        )

    def _per_host(self, total: int, shard_count: int) -> int:
        per_device = max(total // (shard_count * jax.local_device_count()), 1)
        return per_device * jax.local_device_count()

    def train_dataset(self, processors, shard_index: int, shard_count: int):
        from transformer_jax.tasks.classification.data import text_dataset

        d = self.cfg.data
        return text_dataset(
            self._source(d.train_split),
            self._encode(processors),
            batch_size=self._per_host(d.batch_size, shard_count),
            shuffle=True,
            seed=self.cfg.seed,
            num_epochs=None,
            shard_index=shard_index,
            shard_count=shard_count,
        )

    def eval_dataset(self, processors, split: str, shard_index: int, shard_count: int):
        from transformer_jax.tasks.classification.data import text_dataset

        d = self.cfg.data
        return text_dataset(
            self._source(split),
            self._encode(processors),
            batch_size=self._per_host(d.eval_batch_size, shard_count),
            shuffle=False,
            num_epochs=1,
            shard_index=shard_index,
            shard_count=shard_count,
            drop_remainder=False,
        )

    # -- model -----------------------------------------------------------------------------

    def check_model_settings(self) -> None:
        stand_in = types.SimpleNamespace(
            vocab_size=self.cfg.tokenizer.vocab_size, pad_id=0, cls_id=2, sep_id=1, mask_id=4
        )
        procs = {"tokenizer": stand_in}
        if not self.mlm_head:
            kind = self.cfg.head.problem_type
            procs["labels"] = LabelMap(("a", "b") if kind != "regression" else (), kind)
        self.build_model(self.model_config(procs))

    def model_config(self, processors) -> EncoderModelConfig:
        tok = processors["tokenizer"]
        labels = processors.get("labels")
        return model_config(
            self.cfg,
            vocab_size=tok.vocab_size,
            pad_id=specials(tok).pad_id,
            num_labels=0 if self.mlm_head else labels.num_labels,
            mlm_head=self.mlm_head,
            mask_id=specials(tok).mask_id,
        )

    def model_config_from_saved(self, saved: EncoderModelConfig) -> EncoderModelConfig:
        """An imported (or pre-trained) model's architecture with this run's training knobs
        and head: its labels, its problem type; no masked-LM head."""
        m = self.cfg.model
        head = {}
        if not self.mlm_head:
            head = dict(
                num_labels=self.label_map().num_labels,
                problem_type=self.cfg.head.problem_type,
                mlm_head=False,
            )
        try:
            return saved.replace(
                **head,
                dropout_rate=m.dropout_rate,
                dtype=jnp.dtype(m.dtype),
                remat=m.remat,
                attention_impl=m.attention_impl,
            )
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def config_to_json(self, config) -> dict[str, Any]:
        return config_to_json(config)

    def config_from_json(self, blob: dict[str, Any]):
        return config_from_json(blob)

    def build_model(self, config: EncoderModelConfig) -> nn.Module:
        from transformer_jax.tasks.classification.model import TextEncoderModel

        return TextEncoderModel(config)

    def example_batch(self, config: EncoderModelConfig) -> dict[str, np.ndarray]:
        L = self.cfg.data.max_length
        batch = {"inputs": np.ones((1, L), np.int32), "weights": np.ones((1,), np.float32)}
        if self.mlm_head:
            batch["word_starts"] = np.ones((1, L), np.int32)
        elif config.problem_type == "single_label":
            batch["labels"] = np.zeros((1,), np.int32)
        else:
            batch["labels"] = np.zeros((1, config.num_labels), np.float32)
        return batch

    def init_variables(self, model, rng, batch) -> dict:
        return model.init(rng, batch["inputs"])

    def loss(self, model, params, batch, rng):
        """Summed per-example losses (class-weighted when `head.class_weights` is set)
        over the real rows; accuracy counts exact matches (all labels, multi-label)."""
        c: EncoderModelConfig = model.config
        dropout_rng, _ = jax.random.split(rng)
        logits_BK = model.apply(
            {"params": params}, batch["inputs"], heads=("logits",), rngs={"dropout": dropout_rng}
        )["logits"]
        w_B = batch["weights"].astype(jnp.float32)
        labels = batch["labels"]
        weights = class_weights(self.cfg)
        if c.problem_type == "single_label":
            logp_BK = jax.nn.log_softmax(logits_BK)
            nll_B = -jnp.take_along_axis(logp_BK, labels[:, None], axis=-1)[:, 0]
            scale_B = jnp.asarray(weights, jnp.float32)[labels] if weights else 1.0
            loss_B = nll_B * scale_B
            correct_B = jnp.argmax(logits_BK, -1) == labels
        elif c.problem_type == "multi_label":
            nll_B = optax.sigmoid_binary_cross_entropy(logits_BK, labels)
            if weights:  # weights the positive term of each label
                pos = jnp.asarray(weights, jnp.float32)
                nll_B = nll_B * (labels * pos + (1.0 - labels))
            nll_B = nll_B.mean(-1)
            loss_B = nll_B
            correct_B = jnp.all((logits_BK > 0) == (labels > 0.5), axis=-1)
        else:
            nll_B = jnp.mean(jnp.square(logits_BK - labels), axis=-1)
            loss_B = nll_B
            correct_B = jnp.zeros_like(nll_B, bool)
        loss_sum = jnp.sum(loss_B * w_B)
        n = jnp.sum(w_B)
        metrics = {
            "loss_sum": loss_sum,
            "nll_sum": jnp.sum(nll_B * w_B),
            "correct_sum": jnp.sum(correct_B * w_B),
            "weight_sum": n,
        }
        return loss_sum / jnp.maximum(n, 1.0), metrics

    def batch_counts(self, batch, config: EncoderModelConfig):
        from transformer_jax.train.flops import encoder_decoder_flops

        tokens = jnp.sum(batch["inputs"] != config.pad_id).astype(jnp.float32)
        B, L = batch["inputs"].shape
        D = config.d_model
        flops = encoder_decoder_flops(config.encoder, B, L, 0)
        if config.mlm_head:
            flops += 3 * B * L * (2 * D * D + 2 * D * config.encoder.vocab_size)
        if config.num_labels:
            flops += 3 * B * (2 * D * D + 2 * D * config.num_labels)
        return tokens, float(flops)

    # -- evaluation, inference, CLI --------------------------------------------------------

    def evaluators(self) -> list[Evaluator]:
        if self.mlm_head or self.cfg.head.problem_type == "regression":
            return []
        return [ClassificationEvaluator(self)]

    def pipeline(self, loaded, **settings):
        from transformer_jax.tasks.classification.pipeline import TextClassificationPipeline

        return TextClassificationPipeline.from_loaded(loaded, **settings)

    def attention_view(self, loaded, text: str) -> list:
        from transformer_jax.tasks.classification.attention import encoder_attention

        return encoder_attention(loaded, self.pipeline(loaded), text)

    @classmethod
    def add_cli(cls, subparsers) -> None:
        p = subparsers.add_parser(
            "classify",
            help="classify arguments, or stdin lines (batched)",
            description="Prints one line per input: the top label and its probability "
            "(--json: a JSON list per input, Hugging Face's pipeline output). Inputs longer "
            "than the run's data.max_length tokens are truncated to it (a warning on stderr).",
        )
        p.add_argument("--workdir", required=True)
        p.add_argument("text", nargs="*", help="texts; none = read lines from stdin")
        p.add_argument("--step", type=int, default=None)
        p.add_argument("--averaged", action="store_true")
        p.add_argument("--top-k", type=int, default=1, help="classes per input, best first")
        p.add_argument("--json", action="store_true", help="JSON output")
        p.add_argument(
            "--batch-size", type=int, default=None, help="default: the run's classify.batch_size"
        )
        p.set_defaults(fn=cmd_classify)

        f = subparsers.add_parser(
            "fill-mask",
            help="predict the <mask> token of arguments or stdin lines (masked-LM runs)",
        )
        f.add_argument("--workdir", required=True)
        f.add_argument("text", nargs="*", help="texts with one <mask>; none = stdin lines")
        f.add_argument("--step", type=int, default=None)
        f.add_argument("--top-k", type=int, default=5)
        f.add_argument("--json", action="store_true")
        f.set_defaults(fn=cmd_fill_mask)


class MaskedLMTask(ClassificationTask):
    """Masked-language-model pre-training (BERT's 15%, 80/10/10; whole words by config)."""

    name = "masked_lm"
    pipeline_names = ("fill-mask",)
    base_config_name = "masked_lm_base()"
    mlm_head = True

    @classmethod
    def base_config(cls) -> ml_collections.ConfigDict:
        return masked_lm_base()

    @classmethod
    def add_cli(cls, subparsers) -> None:
        pass  # `fill-mask` comes with the classification task's verbs

    def loss(self, model, params, batch, rng):
        """Cross-entropy at the masked positions; accuracy = masked-token accuracy."""
        c: EncoderModelConfig = model.config
        mask_rng, dropout_rng = jax.random.split(rng)
        ids_BL = batch["inputs"]
        corrupted_BL, target_BL = mask_tokens(
            mask_rng,
            ids_BL,
            batch["word_starts"] if self.cfg.mlm.whole_word else None,
            self.cfg.mlm,
            pad_id=c.pad_id,
            mask_id=c.mask_id,
            vocab_size=c.encoder.vocab_size,
        )
        logits_BLV = model.apply(
            {"params": params},
            corrupted_BL,
            segment_ids_BL=(ids_BL != c.pad_id).astype(jnp.int32),
            heads=("mlm_logits",),
            rngs={"dropout": dropout_rng},
        )["mlm_logits"]
        w_BL = target_BL.astype(jnp.float32) * batch["weights"][:, None]
        logp_BLV = jax.nn.log_softmax(logits_BLV)
        nll_BL = -jnp.take_along_axis(logp_BLV, ids_BL[..., None], axis=-1)[..., 0]
        loss_sum = jnp.sum(nll_BL * w_BL)
        n = jnp.sum(w_BL)
        metrics = {
            "loss_sum": loss_sum,
            "nll_sum": loss_sum,
            "correct_sum": jnp.sum((jnp.argmax(logits_BLV, -1) == ids_BL) * w_BL),
            "weight_sum": n,
        }
        return loss_sum / jnp.maximum(n, 1.0), metrics

    def model_config(self, processors) -> EncoderModelConfig:
        if specials(processors["tokenizer"]).mask_id < 0:
            raise ConfigError(
                "the tokenizer has no mask token (a SentencePiece model needs a "
                f"{MASK_PIECE!r} piece): masked-LM pre-training cannot run"
            )
        return super().model_config(processors)

    def model_config_from_saved(self, saved: EncoderModelConfig) -> EncoderModelConfig:
        if saved.mask_id < 0:
            raise ConfigError("the checkpoint's tokenizer has no mask token: no masked LM")
        return super().model_config_from_saved(saved).replace(mlm_head=True, num_labels=0)

    def pipeline(self, loaded, **settings):
        from transformer_jax.tasks.classification.pipeline import FillMaskPipeline

        return FillMaskPipeline.from_loaded(loaded, **settings)


def mask_tokens(rng, ids_BL, word_starts_BL, mlm, *, pad_id: int, mask_id: int, vocab_size: int):
    """BERT's corruption: picks `mask_rate` of the real tokens (whole words when
    `word_starts_BL` is given; the first and last token of a row, [CLS] and [SEP], never),
    replaces `mask_token_fraction` of those by `mask_id` and `random_token_fraction` by a
    random id. Returns (corrupted ids, bool targets)."""
    pick_rng, how_rng, rand_rng = jax.random.split(rng, 3)
    B, L = ids_BL.shape
    real_BL = ids_BL != pad_id
    length_B = jnp.sum(real_BL, axis=1)
    pos_L = jnp.arange(L)
    inner_BL = real_BL & (pos_L[None] > 0) & (pos_L[None] < length_B[:, None] - 1)
    u_BL = jax.random.uniform(pick_rng, (B, L))
    if word_starts_BL is not None:
        # Every piece reads the draw of its word's first piece.
        word_BL = jnp.cumsum(word_starts_BL * inner_BL, axis=1)
        u_BL = jnp.take_along_axis(u_BL, jnp.clip(word_BL, 0, L - 1), axis=1)
    target_BL = inner_BL & (u_BL < mlm.mask_rate)
    how_BL = jax.random.uniform(how_rng, (B, L))
    to_mask = target_BL & (how_BL < mlm.mask_token_fraction)
    to_random = (
        target_BL
        & (how_BL >= mlm.mask_token_fraction)
        & (how_BL < mlm.mask_token_fraction + mlm.random_token_fraction)
    )
    random_BL = jax.random.randint(rand_rng, (B, L), 0, vocab_size, ids_BL.dtype)
    out = jnp.where(to_mask, jnp.asarray(mask_id, ids_BL.dtype), ids_BL)
    out = jnp.where(to_random, random_BL, out)
    return out, target_BL


# -- evaluation ----------------------------------------------------------------------------


def classification_report(y_true, y_pred, names) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix
    (rows: true label, columns: predicted)."""
    k = len(names)
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    tp = np.diag(cm).astype(float)
    predicted, actual = cm.sum(0).astype(float), cm.sum(1).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros(k), where=actual > 0)
    f1 = np.divide(
        2 * precision * recall, precision + recall, out=np.zeros(k), where=precision + recall > 0
    )
    return {
        "accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "macro_f1": float(f1.mean()) if k else 0.0,
        "per_class": {
            n: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(actual[i]),
            }
            for i, n in enumerate(names)
        },
        "confusion_matrix": {"labels": list(names), "matrix": cm.tolist()},
    }


def confusion_matrix_png(report: dict[str, Any], title: str = "") -> bytes:
    """The confusion matrix as a PNG picture (counts in the cells)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = report["confusion_matrix"]["labels"]
    cm = np.asarray(report["confusion_matrix"]["matrix"])
    size = 1.2 + 0.7 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"accuracy {report['accuracy']:.3f}, macro-F1 {report['macro_f1']:.3f}")
    high = cm.max() / 2 if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > high else "black")  # fmt: skip
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


class ClassificationEvaluator(Evaluator):
    """Accuracy, macro-F1, per-class scores and the confusion matrix of the predictions
    over a split; `files` holds the matrix as a PNG for `tjax eval` to write."""

    name = "macro_f1"

    def __init__(self, task: ClassificationTask):
        self.task = task

    def __call__(self, params, config, processors, split, limit):
        from transformer_jax.data.pipeline import _text
        from transformer_jax.tasks.classification.data import label_value
        from transformer_jax.tasks.classification.pipeline import TextClassificationPipeline

        cfg = self.task.cfg
        limit = cfg.classify.eval_examples if limit is None else limit
        source = self.task._source(split)
        n = len(source) if not limit else min(limit, len(source))
        labels: LabelMap = processors["labels"]
        id_names = self.task.id_names(labels)
        texts, truth = [], []
        for i in range(n):
            ex = source[i]
            texts.append(_text(ex[cfg.data.text_key]))
            truth.append(label_value(ex[cfg.data.label_key], labels, id_names))
        mesh = jax.sharding.get_mesh()
        pipe = TextClassificationPipeline(
            params=params,
            model_config=config,
            tokenizer=processors["tokenizer"],
            labels=labels,
            max_length=cfg.data.max_length,
            batch_size=cfg.classify.batch_size,
            mesh=None if mesh.empty else mesh,
        )
        probs = pipe.probabilities(texts, warn=False)
        if labels.problem_type == "multi_label":  # one binary decision per label
            y_true = np.stack(truth).reshape(-1).astype(int)
            y_pred = (probs > 0.5).reshape(-1).astype(int)
            report = classification_report(y_true, y_pred, ["absent", "present"])
        else:
            y_true = np.asarray(truth, int)
            y_pred = probs.argmax(-1)
            report = classification_report(y_true, y_pred, labels.names)
        out = {
            "macro_f1": report["macro_f1"],
            "class_accuracy": report["accuracy"],
            "report": {"per_class": report["per_class"], **report["confusion_matrix"]},
            "files": {
                "confusion_matrix.png": confusion_matrix_png(report, f"{split}, {n} examples")
            },
            "examples": [
                {
                    "source": t,
                    "reference": labels.names[int(y)] if labels.names else str(y),
                    "hypothesis": labels.names[int(p)] if labels.names else str(p),
                }
                for t, y, p in list(zip(texts, y_true, y_pred))[:5]
            ],
        }
        return out


# -- CLI -----------------------------------------------------------------------------------


def cmd_classify(args, extra) -> int:
    """`tjax classify`: one line (or one JSON list) per input, in order."""
    import json

    from transformer_jax.tasks.classification.pipeline import TextClassificationPipeline

    if args.top_k < 1:
        raise InputError(f"--top-k must be >= 1, got {args.top_k}")
    if args.batch_size is not None and args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    settings = {} if args.batch_size is None else {"batch_size": args.batch_size}
    loaded = load_run(args, "classify", ("classification",))
    pipe = TextClassificationPipeline.from_loaded(loaded, **settings)
    texts = read_texts(args)
    results = pipe.predict(texts, top_k=args.top_k)
    for r in results:
        if args.json:
            print(json.dumps([{"label": x["label"], "score": round(x["score"], 4)} for x in r]))
        else:
            print("  ".join(f"{x['label']} {x['score']:.2f}" for x in r))
    return 0


def cmd_fill_mask(args, extra) -> int:
    """`tjax fill-mask`: the top-k fillers of each input's mask."""
    import json

    from transformer_jax.tasks.classification.pipeline import FillMaskPipeline

    if args.top_k < 1:
        raise InputError(f"--top-k must be >= 1, got {args.top_k}")
    pipe = FillMaskPipeline.from_loaded(load_run(args, "fill-mask", ("masked_lm",)))
    for r in pipe(read_texts(args), top_k=args.top_k):
        if args.json:
            print(json.dumps(r, ensure_ascii=False))
        else:
            print("  ".join(f"{x['token_str']!r} {x['score']:.2f}" for x in r))
    return 0
