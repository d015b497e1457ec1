"""Text-classification and fill-mask pipelines, with the Hugging Face pipelines' outputs.

classifier = transformer_jax.pipeline("text-classification", workdir="runs/classify")
classifier("Este producto es excelente.")        # [{'label': 'POSITIVE', 'score': 0.98}]
classifier(["good", "bad"])                      # one dict per text
classifier("good", top_k=None)                   # every label, best first

Texts longer than the run's `data.max_length` tokens (with [CLS] and [SEP]) are cut to
it, with a warning on stderr; empty or blank texts are classified as they are (the model
sees `[CLS] [SEP]`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from transformer_jax.tasks.classification.model import EncoderModelConfig, TextEncoderModel
from transformer_jax.tasks.classification.text import (
    LabelMap,
    encode_input,
    specials,
    warn_truncated,
)
from transformer_jax.train.metrics import report
from transformer_jax.train.task import InputError


def _round_up(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def _texts(texts) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, bytes | bytearray) or not isinstance(texts, Iterable):
        raise InputError(f"expected text (str) or a list of texts, got {type(texts).__name__}")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"input {i} is {type(t).__name__}, not text (str)")
    return texts


@functools.partial(jax.jit, static_argnames=("config", "head"))
def _forward(params, ids_BL, *, config: EncoderModelConfig, head: str):
    return TextEncoderModel(config).apply({"params": params}, ids_BL, heads=(head,))[head]


@dataclasses.dataclass
class _EncoderRunner:
    """Encodes texts and runs one head of the model over them in length-sorted batches."""

    params: Any
    model_config: EncoderModelConfig
    tokenizer: Any
    max_length: int = 128
    batch_size: int = 64
    mesh: Any = None  # a jax.sharding.Mesh: rows split over its devices, all hosts

    def __post_init__(self) -> None:
        for name in ("max_length", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise InputError(f"{name} must be an int >= 1, got {value!r}")
        if self.max_length < 3:
            raise InputError(f"max_length must be >= 3, got {self.max_length}")
        self.model_config = self.model_config.replace(deterministic=True)

    def encode(self, texts: Sequence[str], warn: bool) -> list[np.ndarray]:
        encoded, cut = [], 0
        for t in texts:
            ids, truncated = encode_input(self.tokenizer, t, self.max_length)
            encoded.append(ids)
            cut += truncated
        if warn:
            warn_truncated(cut, self.max_length)
        return encoded

    def run(self, encoded: list[np.ndarray], head: str, what: str) -> list[np.ndarray]:
        """The head's output row for each encoded input, in input order."""
        pad = self.model_config.pad_id
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        out: list[np.ndarray | None] = [None] * len(encoded)
        multiple = 1
        rows_sharding = None
        if self.mesh is not None:
            from transformer_jax.train import sharding as shd

            rows_sharding = shd.batch_sharding(self.mesh)
            multiple = shd.data_parallel_size(self.mesh)
        per_batch = _round_up(self.batch_size, multiple)
        report(what, 0, len(order))
        for start in range(0, len(order), per_batch):
            rows = order[start : start + per_batch]
            L = min(_round_up(max(len(encoded[i]) for i in rows), 16), self.max_length)
            B = _round_up(_round_up(len(rows), 8) if len(rows) > 8 else len(rows), multiple)
            ids_BL = np.full((B, L), pad, np.int32)
            ids_BL[:, 0] = encoded[rows[0]][0]  # padding rows hold [CLS] alone
            for r, i in enumerate(rows):
                ids_BL[r, : len(encoded[i])] = encoded[i]
            x = ids_BL
            if rows_sharding is not None:
                x = jax.make_array_from_callback(
                    x.shape, rows_sharding, lambda idx, a=ids_BL: a[idx]
                )
            y = _forward(self.params, x, config=self.model_config, head=head)
            if rows_sharding is not None and not (y.is_fully_addressable or y.is_fully_replicated):
                y = jax.jit(lambda a: a, out_shardings=NamedSharding(self.mesh, PartitionSpec()))(y)
            y = np.asarray(y)
            for r, i in enumerate(rows):
                out[i] = y[r]
            report(what, start + len(rows), len(order))
        return out  # type: ignore[return-value]


@dataclasses.dataclass
class TextClassificationPipeline(_EncoderRunner):
    """Texts -> labels with scores (softmax; sigmoid per label for multi-label; the raw
    value for regression)."""

    labels: LabelMap | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.labels is None:
            self.labels = LabelMap(tuple(f"LABEL_{i}" for i in range(self.model_config.num_labels)))
        if self.model_config.num_labels != self.labels.num_labels:
            raise InputError(
                f"the label map has {self.labels.num_labels} labels but the model's head has "
                f"{self.model_config.num_labels} outputs"
            )

    @classmethod
    def from_loaded(cls, loaded, **overrides) -> TextClassificationPipeline:
        if not loaded.model_config.num_labels:
            raise InputError(
                "this checkpoint has no classification head: fine-tune it first "
                "(tjax train --config.train.init_from=<this workdir>)"
            )
        run = loaded.run_config
        kwargs = dict(
            params=loaded.params,
            model_config=loaded.model_config,
            tokenizer=loaded.processors["tokenizer"],
            labels=loaded.processors.get("labels"),
            max_length=run.data.max_length,
            batch_size=run.classify.batch_size,
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    def probabilities(self, texts: Sequence[str], warn: bool = True) -> np.ndarray:
        """[N, K] scores of every label (see the class docstring)."""
        texts = _texts(texts)
        if not texts:
            return np.zeros((0, self.labels.num_labels), np.float32)
        logits = np.stack(self.run(self.encode(texts, warn), "logits", "classifying"))
        kind = self.labels.problem_type
        if kind == "single_label":
            z = logits - logits.max(-1, keepdims=True)
            e = np.exp(z)
            return e / e.sum(-1, keepdims=True)
        if kind == "multi_label":
            return 1.0 / (1.0 + np.exp(-logits))
        return logits

    def predict(self, texts, top_k: int | None = 1) -> list[list[dict[str, Any]]]:
        """For each text, its `top_k` labels (None: all) best first."""
        if top_k is not None and (isinstance(top_k, bool) or int(top_k) < 1):
            raise InputError(f"top_k must be >= 1 (or None for all), got {top_k!r}")
        probs = self.probabilities(texts)
        names = self.labels.names or ("LABEL_0",)
        k = len(names) if top_k is None else min(int(top_k), len(names))
        out = []
        for p in probs:
            best = np.argsort(-p, kind="stable")[:k]
            out.append([{"label": names[j], "score": float(p[j])} for j in best])
        return out

    def __call__(self, texts, top_k: int | None = 1):
        """Hugging Face's shapes: with top_k=1 one dict per text (a list of them); with
        top_k > 1 or None a list per text (for one str: that list)."""
        single = isinstance(texts, str)
        results = self.predict(texts, top_k)
        if top_k == 1:
            return [r[0] for r in results]
        return results[0] if single else results


@dataclasses.dataclass
class FillMaskPipeline(_EncoderRunner):
    """Texts with one mask token -> the most likely tokens in its place."""

    @classmethod
    def from_loaded(cls, loaded, **overrides) -> FillMaskPipeline:
        if not loaded.model_config.mlm_head:
            raise InputError("this checkpoint has no masked-LM head (train a masked_lm run)")
        kwargs = dict(
            params=loaded.params,
            model_config=loaded.model_config,
            tokenizer=loaded.processors["tokenizer"],
            max_length=loaded.run_config.data.max_length,
            batch_size=loaded.run_config.classify.batch_size,
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    def mask_token(self) -> str:
        tok = self.tokenizer
        s = specials(tok)
        if hasattr(tok, "id_to_piece"):
            return tok.id_to_piece(s.mask_id)
        return tok.id_to_token(s.mask_id)

    def _join_mask(self, ids: np.ndarray, mask_id: int) -> np.ndarray:
        """SentencePiece writes " <mask>" as a bare word-start piece then the mask; in
        training a masked word is one mask token, so the bare piece goes."""
        if not hasattr(self.tokenizer, "id_to_piece"):
            return ids
        keep = [
            j
            for j in range(len(ids))
            if not (
                j + 1 < len(ids)
                and ids[j + 1] == mask_id
                and self.tokenizer.id_to_piece(int(ids[j])) == "\u2581"
            )
        ]
        return ids[keep]

    def predict(self, texts, top_k: int = 5) -> list[list[dict[str, Any]]]:
        texts = _texts(texts)
        if isinstance(top_k, bool) or int(top_k) < 1:
            raise InputError(f"top_k must be >= 1, got {top_k!r}")
        mask_id = specials(self.tokenizer).mask_id
        encoded = [self._join_mask(ids, mask_id) for ids in self.encode(texts, warn=True)]
        where = []
        for i, ids in enumerate(encoded):
            hits = np.flatnonzero(ids == mask_id)
            if len(hits) != 1:
                raise InputError(
                    f"input {i} has {len(hits)} {self.mask_token()} tokens; give exactly one"
                )
            where.append(int(hits[0]))
        logits = self.run(encoded, "mlm_logits", "filling masks")
        out = []
        for ids, pos, row in zip(encoded, where, logits, strict=True):
            z = row[pos] - row[pos].max()
            p = np.exp(z) / np.exp(z).sum()
            best = np.argsort(-p, kind="stable")[: int(top_k)]
            results = []
            for j in best:
                filled = ids.copy()
                filled[pos] = j
                results.append(
                    {
                        "score": float(p[j]),
                        "token": int(j),
                        "token_str": self.tokenizer.decode([int(j)]).strip(),
                        "sequence": self.tokenizer.decode(filled[1:-1].tolist()),
                    }
                )
            out.append(results)
        return out

    def __call__(self, texts, top_k: int = 5):
        single = isinstance(texts, str)
        results = self.predict(texts, top_k)
        return results[0] if single else results
