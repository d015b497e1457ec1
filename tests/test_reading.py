"""Chunked reads: the same examples in the same order as grain's per-example map, with
batched source reads and a state that resumes inside a chunk."""

from __future__ import annotations

import grain
import pytest

from transformer_jax.data.reading import batched_source, map_in_chunks


class _Source:
    """A random-access source that counts its single and batched reads."""

    def __init__(self, n: int, batched: bool = True):
        self.n, self.single, self.batched = n, 0, []
        if batched:
            self.__getitems__ = self._many

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        self.single += 1
        return 10 * i

    def _many(self, keys):
        self.batched.append(list(keys))
        return [10 * k for k in keys]


def _pipeline(source, chunk: int, epochs: int | None = 2):
    ds = batched_source(source)[1::2].shuffle(seed=3).repeat(epochs)
    return map_in_chunks(ds, lambda x: x + 1, chunk_size=chunk)


def _reference(n: int, epochs: int = 2) -> list[int]:
    ds = grain.MapDataset.source(list(range(0, 10 * n, 10)))[1::2].shuffle(seed=3).repeat(epochs)
    return list(ds.map(lambda x: x + 1).to_iter_dataset())


@pytest.mark.parametrize("chunk", [1, 4, 7, 64])
def test_same_examples_in_the_same_order_as_a_per_example_map(chunk):
    source = _Source(37)
    assert list(_pipeline(source, chunk)) == _reference(37)
    assert source.single == 0 and source.batched  # every read went through __getitems__
    assert max(len(k) for k in source.batched) == min(chunk, 36)  # chunks span epochs


def test_a_source_without_batched_reads_is_read_one_at_a_time():
    source = _Source(20, batched=False)
    assert list(_pipeline(source, 8)) == _reference(20)
    assert source.single == 20  # 10 examples of the shard, 2 epochs


def test_a_batched_read_that_rejects_its_keys_falls_back_to_single_reads():
    source = _Source(20)

    def broken(self_missing):  # tfds's mock source: a method without its self
        raise AssertionError("not reached")

    source.__getitems__ = lambda: broken(None)  # called with keys -> TypeError
    assert list(_pipeline(source, 8)) == _reference(20)
    assert source.single == 20


@pytest.mark.parametrize("consumed", [0, 3, 5, 6, 11])
def test_the_state_resumes_inside_a_chunk(consumed):
    it = iter(_pipeline(_Source(37), 5, epochs=None))
    for _ in range(consumed):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(12)]
    fresh = iter(_pipeline(_Source(37), 5, epochs=None))
    fresh.set_state(state)
    assert [next(fresh) for _ in range(12)] == expected


def test_chunk_size_must_be_positive():
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        map_in_chunks(batched_source([1, 2]), str, chunk_size=0)
