"""Tests for transformer_jax.decode.search against exhaustive and numpy reference decoders."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from transformer_jax.decode import search

START = 1


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def _penalty(length: int, alpha: float) -> float:
    return ((5.0 + length) / 6.0) ** alpha


# --------------------------------------------------------------------------------------------
# Toy models: a JAX step function plus a numpy log-prob function over (example, prefix).
# --------------------------------------------------------------------------------------------


class Markov:
    """Logits depend only on the previous token through a fixed ``[V, V]`` table."""

    def __init__(self, table: np.ndarray):
        self.table = np.asarray(table, np.float32)

    def init_cache(self, batch: int) -> dict:
        return {"steps": jnp.zeros((batch, 1), jnp.int32), "index": jnp.zeros((), jnp.int32)}

    def step(self, ids: jax.Array, cache: dict) -> tuple[jax.Array, dict]:
        logits = jnp.asarray(self.table)[ids[:, 0]]
        return logits, {"steps": cache["steps"] + 1, "index": cache["index"] + 1}

    def logp(self, b: int, prefix: tuple[int, ...]) -> np.ndarray:
        del b
        return _log_softmax(self.table[prefix[-1]])


class History:
    """Logits depend on the whole token history, which lives in the cache.

    ``logits = bias[b] + sum_t E[t, prefix[t]]``; a wrong beam gather of the history changes
    the logits, and the per-example bias checks the batch/beam layout.
    """

    def __init__(self, rng: np.random.Generator, vocab: int, max_len: int, batch: int):
        self.E = rng.normal(size=(max_len + 1, vocab, vocab)).astype(np.float32) * 1.5
        self.bias = rng.normal(size=(batch, vocab)).astype(np.float32)
        self.max_len = max_len

    def init_cache(self, batch: int) -> dict:
        return {
            "hist": jnp.zeros((batch, self.max_len + 1), jnp.int32),
            "bias": jnp.asarray(self.bias[:batch]),
            "pos": jnp.zeros((), jnp.int32),
        }

    def step(self, ids: jax.Array, cache: dict) -> tuple[jax.Array, dict]:
        pos = cache["pos"]
        hist = lax.dynamic_update_slice_in_dim(cache["hist"], ids, pos, axis=1)
        steps = jnp.arange(self.max_len + 1)
        contrib = jnp.asarray(self.E)[steps[None, :], hist]  # [Bk, T, V]
        mask = (steps <= pos)[None, :, None]
        logits = cache["bias"] + jnp.sum(jnp.where(mask, contrib, 0.0), axis=1)
        return logits, {"hist": hist, "bias": cache["bias"], "pos": pos + 1}

    def logp(self, b: int, prefix: tuple[int, ...]) -> np.ndarray:
        logits = self.bias[b].astype(np.float64).copy()
        for t, tok in enumerate(prefix):
            logits += self.E[t, tok]
        return _log_softmax(logits)


LogpFn = Callable[[int, tuple[int, ...]], np.ndarray]


# --------------------------------------------------------------------------------------------
# Numpy references
# --------------------------------------------------------------------------------------------


def ref_greedy(logp: LogpFn, batch: int, max_len: int, eos: int, max_lengths) -> np.ndarray:
    out = np.zeros((batch, max_len), np.int32)
    for b in range(batch):
        prefix = (START,)
        for t in range(max_lengths[b]):
            tok = int(np.argmax(logp(b, prefix)))
            out[b, t] = tok
            prefix += (tok,)
            if tok == eos:
                break
    return out


def ref_beam(
    logp: LogpFn, b: int, *, beam: int, alpha: float, max_len: int, eos: int
) -> list[tuple[float, tuple[int, ...]]]:
    """Plain alive/finished beam search for one example, without early stopping."""
    alive: list[tuple[float, tuple[int, ...]]] = [(0.0, ())]
    finished: list[tuple[float, tuple[int, ...]]] = []
    for t in range(max_len):
        cands = []
        for score, seq in alive:
            row = logp(b, (START, *seq))
            cands += [(score + row[v], (*seq, v)) for v in range(len(row))]
        cands = sorted(cands, key=lambda c: -c[0])[: 2 * beam]
        ends = [c for c in cands if c[1][-1] == eos or t + 1 == max_len]
        alive = [c for c in cands if not (c[1][-1] == eos or t + 1 == max_len)][:beam]
        finished += [(s / _penalty(t + 1, alpha), seq) for s, seq in ends]
        finished = sorted(finished, key=lambda c: -c[0])[:beam]
    return finished


def exhaustive(
    logp: LogpFn, b: int, *, vocab: int, alpha: float, max_len: int, eos: int
) -> list[tuple[float, tuple[int, ...]]]:
    """Every finished hypothesis (eos-terminated, or cut at max_len) with its score, sorted."""
    hyps = []
    for n in range(1, max_len + 1):
        for seq in itertools.product(range(vocab), repeat=n):
            if eos in seq[:-1] or (seq[-1] != eos and n < max_len):
                continue
            total = sum(logp(b, (START, *seq[:t]))[seq[t]] for t in range(n))
            hyps.append((total / _penalty(n, alpha), seq))
    return sorted(hyps, key=lambda c: -c[0])


def _pad(seq: tuple[int, ...], length: int) -> list[int]:
    return list(seq) + [0] * (length - len(seq))


def _check_beam_against(hyps_by_example, seqs, scores, max_len: int) -> None:
    for b, hyps in enumerate(hyps_by_example):
        want_scores = np.array([s for s, _ in hyps])
        np.testing.assert_allclose(scores[b, : len(hyps)], want_scores, rtol=1e-4, atol=1e-4)
        for k, (_, seq) in enumerate(hyps):
            assert seqs[b, k].tolist() == _pad(seq, max_len), (b, k)


def _jit_beam(model, **kwargs):
    fn = functools.partial(search.beam_search, model.step, **kwargs)
    return jax.jit(lambda cache, max_lengths: fn(cache, max_lengths=max_lengths))


def _jit_greedy(model, **kwargs):
    fn = functools.partial(search.greedy_search, model.step, **kwargs)
    return jax.jit(lambda cache, max_lengths, rng=None: fn(cache, max_lengths=max_lengths, rng=rng))


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def test_beam_helpers_roundtrip_and_gather():
    tree = {"x": jnp.arange(6).reshape(2, 3), "i": jnp.array(7)}
    expanded = search.expand_to_beams(tree, 4)
    assert expanded["x"].shape == (2, 4, 3) and expanded["i"].shape == ()
    flat = search.flatten_beams(expanded)
    assert flat["x"].shape == (8, 3)
    np.testing.assert_array_equal(flat["x"][:4], jnp.broadcast_to(tree["x"][0], (4, 3)))
    back = search.unflatten_beams(flat, 2)
    np.testing.assert_array_equal(back["x"], expanded["x"])

    beams = {"y": jnp.arange(2 * 3 * 2).reshape(2, 3, 2), "i": jnp.array(3)}
    idx = jnp.array([[2, 0], [1, 1]])
    got = search.gather_beams(beams, idx)
    want = np.stack([np.asarray(beams["y"])[b, np.asarray(idx)[b]] for b in range(2)])
    np.testing.assert_array_equal(got["y"], want)
    assert int(got["i"]) == 3


def test_first_argmax_is_numpy_argmax():
    rng = np.random.default_rng(5)
    x = rng.integers(0, 4, size=(6, 50)).astype(np.float32)  # many ties
    x[1] = -np.inf
    x[2, [7, 30]] = np.nan
    x[3, 49] = np.inf
    got = np.asarray(jax.jit(search.first_argmax)(jnp.asarray(x)))
    np.testing.assert_array_equal(got, np.argmax(x, axis=-1))
    assert got.dtype == np.int32 and got[2] == 7


@pytest.mark.parametrize("shape,k", [((3, 4, 5000), 8), ((2, 12800), 3), ((5, 1000), 8)])
def test_blocked_top_k_is_a_stable_sort(shape, k):
    # (5, 1000) is too short to cut into blocks; the others are cut, one with a partial
    # last block. Each row holds 2 fives and 10 fours at random places over 0-3: the
    # blocks holding a five rank first, and the k largest then take the fours by index,
    # also from blocks before them. The last three entries (in the partial block) tie.
    rng = np.random.default_rng(sum(shape) + k)
    x = rng.integers(0, 4, size=shape).astype(np.float32)
    for row in x.reshape(-1, shape[-1]):
        places = rng.choice(shape[-1] - 3, size=12, replace=False)
        row[places[:2]], row[places[2:]], row[-3:] = 5.0, 4.0, 4.0
    x.reshape(-1, shape[-1])[0] = -np.inf
    x.reshape(-1, shape[-1])[-1, : shape[-1] // 2] = -1e9
    values, index = jax.jit(search.blocked_top_k, static_argnums=1)(jnp.asarray(x), k)
    want = np.argsort(-x.astype(np.float64), axis=-1, kind="stable")[..., :k]
    np.testing.assert_array_equal(np.asarray(index), want)
    np.testing.assert_array_equal(np.asarray(values), np.take_along_axis(x, want, axis=-1))
    assert index.dtype == jnp.int32


def test_gather_beams_leaves_the_beam_invariant_leaves_alone():
    # Cross-attention entries (named as the attention core names them) are kept as they
    # are; every other leaf is gathered.
    from transformer_jax.nn.attention import is_cross_cache

    rng = np.random.default_rng(3)
    tree = {
        "layer": {
            "cross": {"cross_key": rng.normal(size=(2, 3, 4)).astype(np.float32), "cross_value": rng.normal(size=(2, 3, 4)).astype(np.float32)},
            "self": {"cached_key": rng.normal(size=(2, 3, 4)).astype(np.float32)},
        }
    }  # fmt: skip
    idx = jnp.array([[2, 2, 0], [1, 0, 0]])
    got = search.gather_beams(jax.tree.map(jnp.asarray, tree), idx, is_cross_cache)
    for name in ("cross_key", "cross_value"):
        np.testing.assert_array_equal(got["layer"]["cross"][name], tree["layer"]["cross"][name])
    key = tree["layer"]["self"]["cached_key"]
    want = np.stack([key[b, np.asarray(idx)[b]] for b in range(2)])
    np.testing.assert_array_equal(got["layer"]["self"]["cached_key"], want)


# --------------------------------------------------------------------------------------------
# Greedy
# --------------------------------------------------------------------------------------------


def test_greedy_matches_reference_with_eos_and_max_lengths():
    batch, vocab, max_len, eos = 8, 6, 7, 2
    model = History(np.random.default_rng(0), vocab, max_len, batch)
    max_lengths = np.array([7, 7, 3, 1, 5, 7, 2, 6], np.int32)
    want = ref_greedy(model.logp, batch, max_len, eos, max_lengths)
    # The case must exercise both eos termination and the per-example cap.
    assert (want == eos).any() and not (want == eos).any(axis=1).all()

    decode = _jit_greedy(
        model, batch_size=batch, max_decode_len=max_len, start_id=START, eos_id=eos
    )
    got = np.asarray(decode(model.init_cache(batch), jnp.asarray(max_lengths)))
    np.testing.assert_array_equal(got, want)
    for b in range(batch):
        assert (got[b, max_lengths[b] :] == 0).all()
        hits = np.flatnonzero(got[b] == eos)
        if hits.size:
            assert (got[b, hits[0] + 1 :] == 0).all()


def test_greedy_matches_python_loop_and_no_jit():
    batch, vocab, max_len, eos = 4, 7, 6, 3
    model = Markov(np.random.default_rng(1).normal(size=(vocab, vocab)) * 2.0)

    cache, ids, rows = model.init_cache(batch), jnp.full((batch, 1), START, jnp.int32), []
    for _ in range(max_len):
        logits, cache = model.step(ids, cache)
        ids = jnp.argmax(logits, axis=-1).astype(jnp.int32)[:, None]
        rows.append(np.asarray(ids[:, 0]))
    want = np.stack(rows, axis=1)
    for row in want:  # pad after the first eos
        hits = np.flatnonzero(row == eos)
        if hits.size:
            row[hits[0] + 1 :] = 0

    kwargs = dict(batch_size=batch, max_decode_len=max_len, start_id=START, eos_id=eos)
    eager = search.greedy_search(model.step, model.init_cache(batch), **kwargs)
    jitted = _jit_greedy(model, **kwargs)(model.init_cache(batch), None)
    np.testing.assert_array_equal(eager, want)
    np.testing.assert_array_equal(jitted, want)


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def test_sampling_top_k_one_equals_greedy():
    batch, vocab, max_len, eos = 6, 8, 6, 0
    model = History(np.random.default_rng(2), vocab, max_len, batch)
    max_lengths = jnp.array([6, 2, 6, 4, 6, 5], jnp.int32)
    kwargs = dict(batch_size=batch, max_decode_len=max_len, start_id=START, eos_id=eos)
    greedy = _jit_greedy(model, **kwargs)(model.init_cache(batch), max_lengths)
    sampled = _jit_greedy(model, temperature=1.3, top_k=1, **kwargs)(
        model.init_cache(batch), max_lengths, jax.random.key(0)
    )
    np.testing.assert_array_equal(sampled, greedy)


def _fixed_distribution(probs: np.ndarray) -> Markov:
    vocab = len(probs)
    return Markov(np.broadcast_to(np.log(probs), (vocab, vocab)))


def test_sampling_respects_top_p_and_top_k():
    probs = np.array([0.5, 0.3, 0.1, 0.06, 0.04])
    model = _fixed_distribution(probs)
    batch, max_len = 512, 8
    kwargs = dict(batch_size=batch, max_decode_len=max_len, start_id=START, eos_id=4)
    cache = model.init_cache(batch)
    for filt in (dict(top_p=0.75), dict(top_k=2), dict(top_k=3, top_p=0.7)):
        decode = _jit_greedy(model, temperature=1.0, **filt, **kwargs)
        for seed in range(3):
            out = np.asarray(decode(cache, None, jax.random.key(seed)))
            assert set(np.unique(out).tolist()) == {0, 1}, filt


def test_sampling_frequencies_and_traced_temperature():
    probs = np.array([0.45, 0.25, 0.15, 0.1, 0.05])
    logits = jnp.broadcast_to(jnp.log(jnp.asarray(probs, jnp.float32)), (20000, 5))
    sample = jax.jit(search.sample_logits)
    tokens = np.asarray(sample(logits, jax.random.key(3), temperature=jnp.float32(1.0)))
    np.testing.assert_allclose(np.bincount(tokens, minlength=5) / len(tokens), probs, atol=0.015)
    cold = np.asarray(sample(logits, jax.random.key(4), temperature=jnp.float32(0.0)))
    assert (cold == 0).all()
    nucleus = np.asarray(sample(logits, jax.random.key(5), temperature=1.0, top_p=0.5))
    assert set(np.unique(nucleus).tolist()) == {0, 1}


def test_sampling_requires_rng():
    model = _fixed_distribution(np.full(4, 0.25))
    with pytest.raises(ValueError, match="rng"):
        search.greedy_search(
            model.step,
            model.init_cache(2),
            batch_size=2,
            max_decode_len=3,
            start_id=START,
            eos_id=0,
            temperature=1.0,
        )


# --------------------------------------------------------------------------------------------
# Beam search
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "vocab,max_len,beam,alpha", [(3, 4, 12, 0.6), (4, 3, 18, 0.0), (4, 3, 18, 1.0)]
)
def test_beam_search_exact_when_beam_covers_everything(vocab, max_len, beam, alpha):
    # Every alive prefix fits in the beam and every candidate in the top 2 * beam, so the
    # returned hypotheses must be the exhaustive top-`beam` list.
    batch, eos = 2, 0
    model = History(np.random.default_rng(vocab), vocab, max_len, batch)
    max_lengths = np.array([max_len, max_len - 1], np.int32)
    decode = _jit_beam(
        model,
        batch_size=batch,
        beam_size=beam,
        alpha=alpha,
        max_decode_len=max_len,
        start_id=START,
        eos_id=eos,
    )
    seqs, scores = map(np.asarray, decode(model.init_cache(batch), jnp.asarray(max_lengths)))
    want = [
        exhaustive(model.logp, b, vocab=vocab, alpha=alpha, max_len=int(n), eos=eos)[:beam]
        for b, n in enumerate(max_lengths)
    ]
    _check_beam_against(want, seqs, scores, max_len)


@pytest.mark.parametrize(
    "model_kind,vocab",
    # 1,100 words x 4 beams: the candidates are long enough for blocked_top_k's blocks
    [("markov", 5), ("history", 5), ("markov", 1100)],
)
@pytest.mark.parametrize("beam,alpha", [(2, 0.6), (3, 0.0), (4, 1.0)])
def test_beam_search_matches_numpy_reference(model_kind, vocab, beam, alpha):
    batch, max_len, eos = 4, 6, 3
    rng = np.random.default_rng(10 + beam)
    if model_kind == "markov":
        model = Markov(rng.normal(size=(vocab, vocab)) * 1.5)
    else:
        model = History(rng, vocab, max_len, batch)
    max_lengths = np.array([6, 4, 1, 5], np.int32)
    decode = _jit_beam(
        model,
        batch_size=batch,
        beam_size=beam,
        alpha=alpha,
        max_decode_len=max_len,
        start_id=START,
        eos_id=eos,
    )
    seqs, scores = map(np.asarray, decode(model.init_cache(batch), jnp.asarray(max_lengths)))
    want = [
        ref_beam(model.logp, b, beam=beam, alpha=alpha, max_len=int(n), eos=eos)
        for b, n in enumerate(max_lengths)
    ]
    _check_beam_against(want, seqs, scores, max_len)
    for b, n in enumerate(max_lengths):
        assert (seqs[b, :, n:] == 0).all()
        for row in seqs[b]:
            hits = np.flatnonzero(row == eos)
            assert hits.size == 0 or (row[hits[0] + 1 :] == 0).all()
    assert np.all(np.diff(scores, axis=1) <= 1e-6)


def test_beam_size_one_without_penalty_equals_greedy():
    batch, vocab, max_len, eos, stop_from = 6, 6, 8, 5, 2
    table = np.random.default_rng(4).normal(size=(vocab, vocab)) * 2.0
    table[:, eos] = -30.0
    table[stop_from, eos] = 10.0  # eos is only ever likely right after `stop_from`
    model = Markov(table)
    max_lengths = jnp.array([8, 3, 1, 8, 6, 2], jnp.int32)
    kwargs = dict(batch_size=batch, max_decode_len=max_len, start_id=START, eos_id=eos)
    greedy = np.asarray(_jit_greedy(model, **kwargs)(model.init_cache(batch), max_lengths))
    assert (greedy == eos).any()
    seqs, scores = _jit_beam(model, beam_size=1, alpha=0.0, **kwargs)(
        model.init_cache(batch), max_lengths
    )
    np.testing.assert_array_equal(seqs[:, 0], greedy)
    for b in range(batch):
        prefix, total = (START,), 0.0
        for tok in greedy[b][: int(max_lengths[b])]:
            total += model.logp(b, prefix)[tok]
            prefix += (int(tok),)
            if tok == eos:
                break
        np.testing.assert_allclose(scores[b, 0], total, rtol=1e-5, atol=1e-5)


def test_beam_search_jit_matches_no_jit():
    batch, vocab, max_len, eos = 3, 6, 5, 1
    model = History(np.random.default_rng(7), vocab, max_len, batch)
    kwargs = dict(
        batch_size=batch, beam_size=3, alpha=0.6, max_decode_len=max_len, start_id=START, eos_id=eos
    )
    max_lengths = jnp.array([5, 3, 4], jnp.int32)
    eager = search.beam_search(
        model.step, model.init_cache(batch), max_lengths=max_lengths, **kwargs
    )
    jitted = _jit_beam(model, **kwargs)(model.init_cache(batch), max_lengths)
    np.testing.assert_array_equal(eager[0], jitted[0])
    np.testing.assert_allclose(eager[1], jitted[1], rtol=1e-6)


def test_decoders_stop_early_when_finished():
    # eos is almost certain at the first step, so both loops must stop long before max length.
    vocab, eos, max_len = 4, 2, 10
    table = np.zeros((vocab, vocab), np.float32)
    table[:, eos] = 20.0
    model = Markov(table)
    calls: list[int] = []

    def counting_step(ids, cache):
        jax.debug.callback(lambda: calls.append(1))
        return model.step(ids, cache)

    kwargs = dict(batch_size=2, max_decode_len=max_len, start_id=START, eos_id=eos)
    greedy = jax.jit(lambda c: search.greedy_search(counting_step, c, **kwargs))
    out = greedy(model.init_cache(2)).block_until_ready()
    assert out[:, 0].tolist() == [eos, eos] and len(calls) == 1

    calls.clear()
    beam = jax.jit(lambda c: search.beam_search(counting_step, c, beam_size=2, **kwargs))
    seqs, _ = beam(model.init_cache(2))
    jax.block_until_ready(seqs)
    assert seqs[:, 0, 0].tolist() == [eos, eos]
    assert (np.asarray(seqs[:, 0, 1:]) == 0).all()
    assert 1 <= len(calls) <= 3


def test_zero_max_length_generates_nothing():
    batch, vocab, max_len, eos = 2, 5, 4, 3
    model = Markov(np.random.default_rng(8).normal(size=(vocab, vocab)))
    max_lengths = jnp.array([0, 3], jnp.int32)
    kwargs = dict(batch_size=batch, max_decode_len=max_len, start_id=START, eos_id=eos)
    greedy = np.asarray(_jit_greedy(model, **kwargs)(model.init_cache(batch), max_lengths))
    seqs, _ = _jit_beam(model, beam_size=2, **kwargs)(model.init_cache(batch), max_lengths)
    assert (greedy[0] == 0).all() and (np.asarray(seqs[0]) == 0).all()
    assert (greedy[1, :3] != 0).any() and (np.asarray(seqs[1, :, :3]) != 0).any()


# --------------------------------------------------------------------------------------------
# Hugging Face options: forced eos, banned tokens, "hf" beam scoring
# --------------------------------------------------------------------------------------------


def _processed(row: np.ndarray, t: int, cap: int, eos: int, forced_eos: bool, banned) -> np.ndarray:
    """A log-prob row after Hugging Face's bad-words and forced-eos processors."""
    row = row.copy()
    row[list(banned)] = -np.inf
    if forced_eos and t == cap - 1:
        row = np.where(np.arange(len(row)) == eos, 0.0, -np.inf)
    return row


def ref_greedy_hf(logp: LogpFn, batch, max_len, eos, max_lengths, forced_eos, banned):
    out = np.zeros((batch, max_len), np.int32)
    for b in range(batch):
        prefix = (START,)
        for t in range(max_lengths[b]):
            row = _processed(logp(b, prefix), t, max_lengths[b], eos, forced_eos, banned)
            tok = int(np.argmax(row))
            out[b, t] = tok
            prefix += (tok,)
            if tok == eos:
                break
    return out


def ref_hf_beam(
    logp: LogpFn,
    b: int,
    *,
    beam: int,
    lp: float,
    max_len: int,
    eos: int,
    early_stopping: str,
    forced_eos: bool = False,
    banned=(),
) -> list[tuple[float, tuple[int, ...]]]:
    """transformers' beam search for one example (vocab >= 2 * beam, one eos token)."""
    running: list[tuple[float, tuple[int, ...]]] = [(0.0, ())]
    finished: list[tuple[float, tuple[int, ...]]] = []
    improvable = True
    for t in range(max_len):
        cands = []
        for score, seq in running:
            row = _processed(logp(b, (START, *seq)), t, max_len, eos, forced_eos, banned)
            cands += [(score + row[v], (*seq, v)) for v in range(len(row))]
        cands = sorted(cands, key=lambda c: -c[0])[: 2 * beam]
        new_len = t + 1
        hits = [seq[-1] == eos or new_len >= max_len for _, seq in cands]
        # Finishing candidates sink by 1e9 rather than leave the running pool.
        running = sorted(
            [(s - 1e9 if h else s, seq) for (s, seq), h in zip(cands, hits)], key=lambda c: -c[0]
        )[:beam]
        full = len(finished) == beam
        if improvable and not (early_stopping == "true" and full):
            for k in range(beam):  # only the top `beam` candidates may finish
                s, seq = cands[k]
                if hits[k] and np.isfinite(s):
                    finished.append((s / new_len**lp, seq))
            finished = sorted(finished, key=lambda c: -c[0])[:beam]
        best_len = max_len if early_stopping == "never" and lp > 0 else new_len
        best = running[0][0] / best_len**lp
        if len(finished) == beam:
            improvable = improvable and best > min(s for s, _ in finished)
        if (
            not improvable
            or (early_stopping == "true" and len(finished) == beam)
            or new_len >= max_len
        ):
            break
    return finished


@pytest.mark.parametrize("forced_eos", [False, True])
def test_greedy_forced_eos_and_banned_tokens(forced_eos):
    batch, vocab, max_len, eos = 8, 6, 7, 2
    banned = (5,)
    model = History(np.random.default_rng(0), vocab, max_len, batch)
    max_lengths = np.array([7, 7, 3, 1, 5, 7, 2, 6], np.int32)
    want = ref_greedy_hf(model.logp, batch, max_len, eos, max_lengths, forced_eos, banned)
    decode = _jit_greedy(
        model,
        batch_size=batch,
        max_decode_len=max_len,
        start_id=START,
        eos_id=eos,
        forced_eos=forced_eos,
        banned_ids=banned,
    )
    got = np.asarray(decode(model.init_cache(batch), jnp.asarray(max_lengths)))
    np.testing.assert_array_equal(got, want)
    assert not (got == banned[0]).any()
    plain = ref_greedy(model.logp, batch, max_len, eos, max_lengths)
    assert (plain == banned[0]).any()  # the ban changed the output
    unforced = ref_greedy_hf(model.logp, batch, max_len, eos, max_lengths, False, banned)
    capped = [b for b in range(batch) if eos not in unforced[b, : max_lengths[b]]]
    assert capped  # some rows reach their cap without eos
    for b in capped:
        last = got[b, max_lengths[b] - 1]
        assert (last == eos) == forced_eos, b


@pytest.mark.parametrize(
    "beam,lp,early_stopping",
    [(2, 1.0, "false"), (3, 2.0, "false"), (3, -0.5, "false"), (2, 1.0, "true"), (3, 0.7, "never")],
)
@pytest.mark.parametrize("forced_eos", [False, True])
def test_hf_beam_search_matches_reference(beam, lp, early_stopping, forced_eos):
    batch, vocab, max_len, eos = 4, 7, 6, 3
    banned = (5,)
    model = History(np.random.default_rng(20 + beam), vocab, max_len, batch)
    max_lengths = np.array([6, 4, 1, 5], np.int32)
    decode = _jit_beam(
        model,
        batch_size=batch,
        beam_size=beam,
        alpha=lp,
        max_decode_len=max_len,
        start_id=START,
        eos_id=eos,
        length_penalty_type="hf",
        early_stopping=early_stopping,
        forced_eos=forced_eos,
        banned_ids=banned,
    )
    seqs, scores = map(np.asarray, decode(model.init_cache(batch), jnp.asarray(max_lengths)))
    want = [
        ref_hf_beam(
            model.logp,
            b,
            beam=beam,
            lp=lp,
            max_len=int(n),
            eos=eos,
            early_stopping=early_stopping,
            forced_eos=forced_eos,
            banned=banned,
        )
        for b, n in enumerate(max_lengths)
    ]
    _check_beam_against(want, seqs, scores, max_len)
    assert not (seqs == banned[0]).any()
    if forced_eos:
        for b, n in enumerate(max_lengths):
            for row in seqs[b, : len(want[b])]:
                assert eos in row[:n].tolist(), (b, row)


def test_beam_search_refuses_unknown_scoring():
    model = _fixed_distribution(np.full(4, 0.25))
    kwargs = dict(batch_size=2, max_decode_len=3, start_id=START, eos_id=0)
    with pytest.raises(ValueError, match="length_penalty_type"):
        search.beam_search(model.step, model.init_cache(2), length_penalty_type="x", **kwargs)
    with pytest.raises(ValueError, match="early_stopping"):
        search.beam_search(model.step, model.init_cache(2), early_stopping=False, **kwargs)
