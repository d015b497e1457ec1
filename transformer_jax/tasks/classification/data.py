"""Grain pipelines of labelled (or unlabelled) texts: encode, shard, shuffle, batch.

Batches are dicts of numpy arrays with one row per example:

    inputs       int32 [B, L]  `[CLS] text [SEP]` then padding (pad_id)
    weights      float32 [B]   1 for a real example, 0 for a padding row
    labels       int32 [B] (single-label), float32 [B, K] (multi-label 0/1) or
                 float32 [B, K] (regression; K = 1 usually)     (classification)
    word_starts  int32 [B, L]  1 where a word begins (whole-word masking)  (masked LM)

Iterators are checkpointable like the translation ones (`get_state`/`set_state`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from transformer_jax.data.pipeline import _field, _text
from transformer_jax.data.reading import batched_source, map_in_chunks
from transformer_jax.tasks.classification.text import LabelMap, encode_input, specials, word_starts
from transformer_jax.train.task import InputError


def label_value(value: Any, labels: LabelMap, id_names: Sequence[str] | None = None) -> np.ndarray:
    """One example's label as the head's target (see the module docstring). `id_names`
    names the dataset's label ids when they are not the head's order."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    kind = labels.problem_type
    if kind == "regression":
        arr = np.asarray(value, np.float32).reshape(-1)
        if arr.size != labels.num_labels:
            raise InputError(
                f"a regression label has {arr.size} values, the head has {labels.num_labels}"
            )
        return arr
    if kind == "multi_label":
        if isinstance(value, str | bytes):
            value = [value]
        arr = np.asarray(value)
        if arr.dtype.kind in "USO":  # names of the labels present
            out = np.zeros(labels.num_labels, np.float32)
            for name in arr.reshape(-1):
                out[labels.index(_text(name))] = 1.0
            return out
        if arr.size != labels.num_labels:
            raise InputError(
                f"a multi-label target has {arr.size} entries, the labels are {list(labels.names)}"
            )
        return arr.astype(np.float32).reshape(-1)
    if isinstance(value, bytes | str | np.bytes_ | np.str_):
        try:
            return np.asarray(labels.index(_text(value)), np.int32)
        except ValueError as e:
            raise InputError(str(e)) from None
    index = int(value)
    if id_names is not None and 0 <= index < len(id_names):
        return label_value(id_names[index], labels)
    if not 0 <= index < labels.num_labels:
        raise InputError(
            f"label id {index} is outside the {labels.num_labels} configured labels "
            f"{list(labels.names)}"
        )
    return np.asarray(index, np.int32)


class Encode:
    """A raw example -> one row (see the module docstring)."""

    def __init__(
        self,
        tokenizer,
        *,
        text_key: str,
        max_length: int,
        label_key: str | None = None,
        labels: LabelMap | None = None,
        id_names: Sequence[str] | None = None,
        with_word_starts: bool = False,
    ):
        self.tokenizer = tokenizer
        self.text_key, self.label_key = text_key, label_key
        self.labels, self.id_names = labels, id_names
        self.max_length = max_length
        self.with_word_starts = with_word_starts
        self.pad_id = specials(tokenizer).pad_id

    def __call__(self, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
        ids, _ = encode_input(
            self.tokenizer, _text(_field(example, self.text_key)), self.max_length
        )
        row = np.full(self.max_length, self.pad_id, np.int32)
        row[: len(ids)] = ids
        out = {"inputs": row, "weights": np.asarray(1.0, np.float32)}
        if self.labels is not None:
            out["labels"] = label_value(_field(example, self.label_key), self.labels, self.id_names)
        if self.with_word_starts:
            starts = np.zeros(self.max_length, np.int32)
            starts[1 : len(ids) - 1] = word_starts(self.tokenizer, ids[1:-1])
            out["word_starts"] = starts
        return out


def _stack(rows: Sequence[dict[str, np.ndarray]], num_rows: int) -> dict[str, np.ndarray]:
    """Stacks rows; a short (final) batch gets all-zero rows (weight 0)."""
    out = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    n = len(rows)
    if n < num_rows:
        out = {
            k: np.concatenate([v, np.zeros((num_rows - n, *v.shape[1:]), v.dtype)])
            for k, v in out.items()
        }
    return out


def text_dataset(
    source: Sequence[Mapping[str, Any]],
    encode: Encode,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    num_epochs: int | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
    drop_remainder: bool = True,
) -> grain.IterDataset:
    """Batches of `batch_size` encoded examples from this host's shard of `source`."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    ds = batched_source(source)[shard_index::shard_count]
    if len(ds) == 0:
        raise ValueError(f"Shard {shard_index} of {shard_count} is empty ({len(source)} examples).")
    if shuffle:
        ds = ds.shuffle(seed=seed)
    it = map_in_chunks(ds.repeat(num_epochs), encode)
    return it.batch(
        batch_size,
        drop_remainder=drop_remainder,
        batch_fn=lambda rows: _stack(rows, batch_size),
    )
