"""Grain input pipelines for translation: tokenize, shard, shuffle, pack/bucket/pad, batch.

Batches are dicts of int32 numpy arrays (Flax WMT convention)::

    inputs, targets                              [rows, length] token ids, 0 = padding
    inputs_segmentation, targets_segmentation    1, 2, ... per packed example, 0 = padding
    inputs_position, targets_position            0, 1, ... restarting in every segment

Iterators from :func:`translation_dataset` are checkpointable: ``it.get_state()``
is JSON-serialisable and ``it.set_state(state)`` resumes exactly. Bucketing
states also hold the token ids still buffered in unfinished buckets.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from transformer_jax.data.reading import batched_source, map_in_chunks
from transformer_jax.data.tokenizer import Tokenizer

BATCH_KEYS = (
    "inputs",
    "targets",
    "inputs_segmentation",
    "targets_segmentation",
    "inputs_position",
    "targets_position",
)
BATCHING_MODES = ("pack", "bucket", "pad")

Batch = dict[str, np.ndarray]
Row = tuple[list[int], list[int]]


def _text(value: Any) -> str:
    """Example field as str (TFDS text features come back as bytes)."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8")
    if isinstance(value, str):
        return value
    raise ValueError(f"Expected a text field (str or bytes), got {type(value).__name__}.")


def _field(example: Mapping[str, Any], key: str) -> Any:
    try:
        return example[key]
    except KeyError:
        raise ValueError(f"Example has no field {key!r}; fields: {sorted(example)}.") from None


def _encode(tokenizer: Tokenizer, text: str, max_length: int) -> np.ndarray:
    ids = tokenizer.encode(text)[: max_length - 1]
    ids.append(tokenizer.eos_id)
    return np.asarray(ids, dtype=np.int32)


class _Tokenize:
    """Maps a raw example to ``{'inputs': int32[<=max_length], 'targets': ...}`` ending in eos."""

    def __init__(
        self, src_key: str, tgt_key: str, src_tok: Tokenizer, tgt_tok: Tokenizer, max_length: int
    ):
        self.src_key, self.tgt_key = src_key, tgt_key
        self.src_tok, self.tgt_tok = src_tok, tgt_tok
        self.max_length = max_length

    def __call__(self, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return {
            "inputs": _encode(self.src_tok, _text(_field(example, self.src_key)), self.max_length),
            "targets": _encode(self.tgt_tok, _text(_field(example, self.tgt_key)), self.max_length),
        }


def _rows_to_batch(rows: Sequence[Row], length: int, num_rows: int) -> Batch:
    """One example per row, padded to ``[num_rows, length]``; missing rows are all zeros."""
    batch = {k: np.zeros((num_rows, length), np.int32) for k in BATCH_KEYS}
    for r, (inputs, targets) in enumerate(rows):
        for prefix, ids in (("inputs", inputs), ("targets", targets)):
            n = len(ids)
            batch[prefix][r, :n] = ids
            batch[f"{prefix}_segmentation"][r, :n] = 1
            batch[f"{prefix}_position"][r, :n] = np.arange(n, dtype=np.int32)
    return batch


def _stack_packed(rows: Sequence[Mapping[str, np.ndarray]], num_rows: int) -> Batch:
    """Stacks rows from grain's packer under the batch key names, padding to ``num_rows``."""
    names = {
        "inputs": "inputs",
        "targets": "targets",
        "inputs_segmentation": "inputs_segment_ids",
        "targets_segmentation": "targets_segment_ids",
        "inputs_position": "inputs_positions",
        "targets_position": "targets_positions",
    }
    batch = {}
    for key, name in names.items():
        stacked = np.stack([np.asarray(row[name], np.int32) for row in rows])
        if len(rows) < num_rows:
            stacked = np.concatenate(
                [stacked, np.zeros((num_rows - len(rows), stacked.shape[1]), np.int32)]
            )
        batch[key] = stacked
    return batch


class _BucketDatasetIterator(grain.DatasetIterator):
    """Groups examples by length and emits a padded batch when a bucket is full."""

    def __init__(
        self,
        parent: grain.DatasetIterator,
        boundaries: Sequence[int],
        batch_sizes: Sequence[int],
        drop_remainder: bool,
    ):
        super().__init__(parent)
        self._boundaries = list(boundaries)
        self._batch_sizes = list(batch_sizes)
        self._drop_remainder = drop_remainder
        self._buffers: list[list[Row]] = [[] for _ in boundaries]
        self._exhausted = False

    def __next__(self) -> Batch:
        while not self._exhausted:
            try:
                example = next(self._parent)
            except StopIteration:
                self._exhausted = True
                break
            inputs, targets = example["inputs"].tolist(), example["targets"].tolist()
            b = bisect.bisect_left(self._boundaries, max(len(inputs), len(targets)))
            self._buffers[b].append((inputs, targets))
            if len(self._buffers[b]) == self._batch_sizes[b]:
                rows, self._buffers[b] = self._buffers[b], []
                return _rows_to_batch(rows, self._boundaries[b], self._batch_sizes[b])
        if not self._drop_remainder:
            for b, rows in enumerate(self._buffers):
                if rows:
                    self._buffers[b] = []
                    return _rows_to_batch(rows, self._boundaries[b], self._batch_sizes[b])
        raise StopIteration

    def get_state(self) -> dict[str, Any]:
        # Buffered rows are never mutated, so shallow copies make a consistent snapshot.
        return {
            "parent": self._parent.get_state(),
            "buffers": [list(buffer) for buffer in self._buffers],
            "exhausted": self._exhausted,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if len(state["buffers"]) != len(self._boundaries):
            raise ValueError(
                "Iterator state does not match the bucket boundaries of this pipeline."
            )
        self._parent.set_state(state["parent"])
        self._buffers = [[(list(i), list(t)) for i, t in buffer] for buffer in state["buffers"]]
        self._exhausted = bool(state["exhausted"])


class _BucketIterDataset(grain.IterDataset):
    """IterDataset wrapper of :class:`_BucketDatasetIterator`."""

    def __init__(
        self,
        parent: grain.IterDataset,
        boundaries: Sequence[int],
        batch_sizes: Sequence[int],
        drop_remainder: bool,
    ):
        super().__init__(parent)
        self._boundaries = tuple(boundaries)
        self._batch_sizes = tuple(batch_sizes)
        self._drop_remainder = drop_remainder

    def __iter__(self) -> grain.DatasetIterator:
        return _BucketDatasetIterator(
            self._parent.__iter__(), self._boundaries, self._batch_sizes, self._drop_remainder
        )

    def __str__(self) -> str:
        return f"BucketIterDataset(boundaries={self._boundaries}, batch_sizes={self._batch_sizes})"


def default_bucket_boundaries(max_length: int, min_length: int = 8) -> list[int]:
    """Powers of two from ``min_length`` below ``max_length``, then ``max_length``."""
    boundaries = []
    length = min_length
    while length < max_length:
        boundaries.append(length)
        length *= 2
    return [*boundaries, max_length]


def _round_rows(rows: int, multiple: int) -> int:
    return max(multiple, rows // multiple * multiple)


def translation_dataset(
    source: Sequence[Mapping[str, Any]],
    *,
    src_key: str,
    tgt_key: str,
    src_tokenizer: Tokenizer,
    tgt_tokenizer: Tokenizer,
    max_length: int,
    tokens_per_batch: int,
    batching: str = "pack",
    shuffle: bool = True,
    seed: int = 0,
    num_epochs: int | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
    bucket_boundaries: Sequence[int] | None = None,
    drop_remainder: bool = True,
    batch_size_multiple: int = 1,
    read_options: grain.ReadOptions | None = None,
) -> grain.IterDataset:
    """Translation batches from a random-access ``source`` of ``{src_key: text, tgt_key: text}``.

    Args:
      source: Random-access examples (e.g. :func:`catalog.data_source`); text as str or bytes.
      max_length: Maximum tokens per sequence, eos included (longer ones are truncated).
      tokens_per_batch: Token budget per batch: ``rows * row_length <= tokens_per_batch``.
      batching: ``"pack"`` (several examples per row; the source and target of one
        example share a segment id), ``"bucket"`` (length buckets, one
        example per row, rows per batch = tokens_per_batch // bucket length) or ``"pad"``
        (one example per row of ``max_length``, in source order unless shuffled).
      shuffle: Seeded global shuffle, different in every epoch.
      num_epochs: Passes over the data; ``None`` repeats forever.
      shard_index, shard_count: This host reads examples ``shard_index::shard_count``.
      bucket_boundaries: Bucket lengths for ``"bucket"`` (default: powers of two up to
        ``max_length``); the last one must be ``>= max_length``.
      drop_remainder: Drop the last incomplete batch (of every bucket). If False, it is
        padded with empty rows so that all batches of one length have the same shape.
      batch_size_multiple: Rows per batch are rounded down to a multiple of this
        (e.g. the number of local devices), but never below it.
      read_options: Grain read threads/buffer for reading and tokenizing (the buffer
        counts chunks of 64 examples, see :func:`reading.map_in_chunks`).
    """
    if batching not in BATCHING_MODES:
        raise ValueError(f"Unknown batching {batching!r}; expected one of {BATCHING_MODES}.")
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}.")
    if tokens_per_batch < max_length:
        raise ValueError(
            f"tokens_per_batch ({tokens_per_batch}) must be >= max_length ({max_length})."
        )
    if not 0 <= shard_index < shard_count:
        raise ValueError(
            f"Need 0 <= shard_index < shard_count, got {shard_index} and {shard_count}."
        )
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be positive or None, got {num_epochs}.")

    ds = batched_source(source)[shard_index::shard_count]
    if len(ds) == 0:
        raise ValueError(f"Shard {shard_index} of {shard_count} is empty ({len(source)} examples).")
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    tokenize = _Tokenize(src_key, tgt_key, src_tokenizer, tgt_tokenizer, max_length)
    it_ds = map_in_chunks(ds, tokenize, read_options)

    if batching == "bucket":
        boundaries = sorted(set(bucket_boundaries or default_bucket_boundaries(max_length)))
        if boundaries[0] < 1 or boundaries[-1] < max_length:
            raise ValueError(
                f"bucket_boundaries {boundaries} must be positive and reach max_length={max_length}."
            )
        if boundaries[-1] > tokens_per_batch:
            raise ValueError(
                f"Largest bucket {boundaries[-1]} exceeds tokens_per_batch={tokens_per_batch}."
            )
        sizes = [_round_rows(tokens_per_batch // b, batch_size_multiple) for b in boundaries]
        return _BucketIterDataset(it_ds, boundaries, sizes, drop_remainder)

    rows = _round_rows(tokens_per_batch // max_length, batch_size_multiple)
    batch_fn: Callable[[Sequence[Any]], Batch]
    if batching == "pack":
        it_ds = grain.experimental.FirstFitPackIterDataset(
            it_ds,
            length_struct={"inputs": max_length, "targets": max_length},
            num_packing_bins=rows,
            seed=seed,
            shuffle_bins=shuffle,
        )
        batch_fn = lambda packed: _stack_packed(packed, rows)
    else:
        batch_fn = lambda examples: _rows_to_batch(
            [(e["inputs"].tolist(), e["targets"].tolist()) for e in examples], max_length, rows
        )
    return it_ds.batch(rows, drop_remainder=drop_remainder, batch_fn=batch_fn)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


def iterator_state_to_json(it: grain.DatasetIterator) -> str:
    """The iterator's state as a JSON string (see :func:`restore_iterator_state`)."""
    return json.dumps(_jsonable(it.get_state()), separators=(",", ":"))


def restore_iterator_state(it: grain.DatasetIterator, state: str) -> None:
    """Resumes ``it`` (a fresh iterator of the same pipeline) from a JSON state."""
    it.set_state(json.loads(state))


def translation_eval_examples(
    source: Sequence[Mapping[str, Any]], src_key: str, tgt_key: str, limit: int | None = None
) -> list[tuple[str, str]]:
    """The first ``limit`` (all if None) raw (source, target) text pairs, in source order."""
    n = len(source) if limit is None else min(limit, len(source))
    return [
        (_text(_field(source[i], src_key)), _text(_field(source[i], tgt_key))) for i in range(n)
    ]
