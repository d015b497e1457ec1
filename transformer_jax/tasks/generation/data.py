"""Causal-LM batches: documents as [bos] text [eos], packed into fixed-length rows.

Each row holds several documents, each with its own segment id (1, 2, ...; 0 marks
padding) and positions counting from 0, so no token attends across documents. A document
longer than a row is cut into row-length pieces (each piece's positions restart at 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from transformer_jax.data.pipeline import _text
from transformer_jax.data.reading import batched_source, map_in_chunks
from transformer_jax.tasks.generation.text import encode_document

KEYS = ("inputs", "segment_ids", "positions")


class EncodeDocument:
    """text example -> [bos] ids [eos] (int32)."""

    def __init__(self, tokenizer: Any, text_key: str) -> None:
        self.tokenizer, self.text_key = tokenizer, text_key

    def __call__(self, example: Mapping[str, Any]) -> np.ndarray:
        return np.asarray(encode_document(self.tokenizer, _text(example[self.text_key])), np.int32)


class _Pieces(grain.experimental.FlatMapTransform):
    """One document's ids -> its row-length pieces."""

    max_fan_out = 1 << 16

    def __init__(self, length: int) -> None:
        self.length = length

    def flat_map(self, ids: np.ndarray) -> list[dict[str, np.ndarray]]:
        return [{"inputs": ids[i : i + self.length]} for i in range(0, len(ids), self.length)]


def _stack(rows: Sequence[Mapping[str, np.ndarray]], num_rows: int) -> dict[str, np.ndarray]:
    """grain's packed rows under our key names, padded with empty rows to `num_rows`."""
    names = {
        "inputs": "inputs",
        "segment_ids": "inputs_segment_ids",
        "positions": "inputs_positions",
    }
    batch = {}
    for key, name in names.items():
        stacked = np.stack([np.asarray(row[name], np.int32) for row in rows])
        if len(rows) < num_rows:
            pad = np.zeros((num_rows - len(rows), stacked.shape[1]), np.int32)
            stacked = np.concatenate([stacked, pad])
        batch[key] = stacked
    return batch


def lm_dataset(
    source: Sequence[Mapping[str, Any]],
    encode: EncodeDocument,
    *,
    max_length: int,
    rows: int,
    shuffle: bool,
    seed: int = 0,
    num_epochs: int | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
    drop_remainder: bool = True,
) -> grain.IterDataset:
    """Packed batches {"inputs", "segment_ids", "positions"}: int32[rows, max_length]."""
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"Need 0 <= shard_index < shard_count, got {shard_index}, {shard_count}")
    ds = batched_source(source)[shard_index::shard_count]
    if len(ds) == 0:
        raise ValueError(f"Shard {shard_index} of {shard_count} is empty ({len(source)} examples)")
    if shuffle:
        ds = ds.shuffle(seed=seed)
    it = map_in_chunks(ds.repeat(num_epochs), encode)
    it = grain.experimental.FlatMapIterDataset(it, _Pieces(max_length))
    it = grain.experimental.FirstFitPackIterDataset(
        it,
        length_struct={"inputs": max_length},
        num_packing_bins=rows,
        seed=seed,
        shuffle_bins=shuffle,
    )
    return it.batch(rows, drop_remainder=drop_remainder, batch_fn=lambda r: _stack(r, rows))
