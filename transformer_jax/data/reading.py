"""Reading random-access examples in chunks, the way every pipeline's first stage does.

A tfds ``ArrayRecordDataSource`` read one record at a time costs about 85 us a record on
a 2-core CPU; the same records fetched with one ``__getitems__`` call cost about 5 us
each. :func:`map_in_chunks` therefore reads ``chunk_size`` consecutive examples of a
(sharded, shuffled, repeated) ``grain.MapDataset`` with one batched read, maps each, and
hands them on one by one: the same examples in the same order as
``ds.map(fn).to_iter_dataset(...)``, and a checkpointable iterator.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import grain


class BatchedReads:
    """A random-access source that grain can read many records of in one call.

    Wraps ``source`` (``len`` and ``[i]``, optionally ``__getitems__`` as tfds sources
    have) and adds the ``_getitems`` that grain's batched-read protocol looks for.
    """

    def __init__(self, source: Any):
        self._source = source
        self._many = getattr(source, "__getitems__", None)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> Any:
        return self._source[index]

    def _getitems(self, indices: Sequence[int]) -> Sequence[Any]:
        if self._many is not None:
            try:
                return list(self._many(list(indices)))
            except TypeError:
                # A source whose batched read does not take a list of keys (tfds's
                # mock data source): read it one record at a time from now on.
                self._many = None
        return [self._source[i] for i in indices]

    def __repr__(self) -> str:
        return f"BatchedReads({self._source!r})"


def batched_source(source: Any) -> grain.MapDataset:
    """``grain.MapDataset.source(source)`` whose chunked reads reach ``__getitems__``."""
    return grain.MapDataset.source(BatchedReads(source))


class _Chunks(grain.MapDataset):
    """Element i: ``fn`` of the parent's elements ``i * size`` .. ``(i + 1) * size - 1``."""

    def __init__(self, parent: grain.MapDataset, size: int, fn: Callable[[Any], Any]):
        super().__init__(parent)
        self._size, self._fn = size, fn

    def __len__(self) -> int:
        n = len(self._parent)
        return n if n >= sys.maxsize - self._size else -(-n // self._size)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        start = index * self._size
        stop = min(start + self._size, len(self._parent))
        items = self._parent._getitems(list(range(start, stop)))  # grain's batched read
        return [self._fn(x) for x in items if x is not None]

    def __str__(self) -> str:
        return f"_Chunks(size={self._size})"


class _Flatten(grain.experimental.FlatMapTransform):
    def __init__(self, max_fan_out: int):
        self.max_fan_out = max_fan_out

    def flat_map(self, element: list) -> list:
        return element


def map_in_chunks(
    ds: grain.MapDataset,
    fn: Callable[[Any], Any],
    read_options: grain.ReadOptions | None = None,
    chunk_size: int = 64,
) -> grain.IterDataset:
    """``ds.map(fn).to_iter_dataset(read_options)``, reading ``chunk_size`` at a time.

    ``ds`` should come from :func:`batched_source` for the reads to be batched. The
    read threads of ``read_options`` work on whole chunks, so its prefetch buffer
    counts chunks (default: 2 threads, 8 chunks ahead).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    chunks = _Chunks(ds, chunk_size, fn).to_iter_dataset(
        read_options or grain.ReadOptions(num_threads=2, prefetch_buffer_size=8)
    )
    return grain.experimental.FlatMapIterDataset(chunks, _Flatten(chunk_size))
