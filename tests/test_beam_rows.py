"""Beam-search steps over caches that are never reordered (`nn.attention.add_beam_rows`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax.nn.attention import _attend_beam_group, add_beam_rows, is_beam_read_cache


def reference(q, k, v, visible, ancestor):
    """float64 NumPy: beam j's keys at slot s are those of row `ancestor[j, s]` of its
    example; softmax over the slots it may see."""
    BR, _, N, H = q.shape
    K = k.shape[1]
    out = np.zeros((BR, 1, N, H))
    for j in range(BR):
        base = j - j % BEAMS
        for n in range(N):
            kn = n // (N // K)
            keys = np.stack([k[base + ancestor[j, s], kn, s] for s in range(k.shape[2])])
            vals = np.stack([v[base + ancestor[j, s], kn, s] for s in range(k.shape[2])])
            scores = keys.astype(np.float64) @ q[j, 0, n].astype(np.float64) / np.sqrt(H)
            scores = np.where(visible[j], scores, -np.inf)
            p = np.exp(scores - scores.max())
            p /= p.sum()
            out[j, 0, n] = p @ vals.astype(np.float64)
    return out


BEAMS = 3


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (4, 2), (6, 1)])
def test_beam_group_attention_is_attention_over_each_beams_ancestors(heads, kv_heads):
    rng = np.random.default_rng(heads * 10 + kv_heads)
    B, S, H, t = 2, 9, 8, 6  # slots 0..t visible, the rest unwritten (random garbage)
    BR = B * BEAMS
    q = rng.normal(size=(BR, 1, heads, H)).astype(np.float32)
    k = rng.normal(size=(BR, kv_heads, S, H)).astype(np.float32)
    v = rng.normal(size=(BR, kv_heads, S, H)).astype(np.float32)
    ancestor = rng.integers(0, BEAMS, size=(BR, S))
    visible = np.broadcast_to(np.arange(S) <= t, (BR, S)).copy()
    visible[1, 2] = False  # a padded slot in one beam
    rows = ancestor[:, :, None] == np.arange(BEAMS)[None, None, :]  # [BR, S, R]
    # The beam-search layout: slot s of an example's row r at s * R + r, keys [B, K, H, X]
    # and values [B, K, X, H].
    v_grouped = np.zeros((B, kv_heads, S * BEAMS, H), np.float32)
    for j in range(BR):
        v_grouped[j // BEAMS, :, j % BEAMS :: BEAMS] = v[j]
    k_grouped = np.zeros((B, kv_heads, S * BEAMS, H), np.float32)
    for j in range(BR):
        k_grouped[j // BEAMS, :, j % BEAMS :: BEAMS] = k[j]
    k_grouped = jnp.asarray(k_grouped.transpose(0, 1, 3, 2))
    v_grouped = jnp.asarray(v_grouped)
    got = _attend_beam_group(
        jnp.asarray(q), k_grouped, v_grouped, jnp.asarray(visible[:, None]), rows
    )
    want = reference(q, k, v, visible, ancestor)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-5)


def test_beam_group_attention_refuses_several_tokens_per_beam():
    q = jnp.zeros((BEAMS, 2, 2, 4))
    k = jnp.zeros((1, 2, 4, 5 * BEAMS))
    rows = jnp.ones((BEAMS, 5, BEAMS), bool)
    with pytest.raises(ValueError, match="one token per beam"):
        _attend_beam_group(q, k, k, jnp.ones((BEAMS, 2, 5), bool), rows)


def test_add_beam_rows_groups_each_examples_beams_and_starts_them_on_their_own_rows():
    key = np.random.default_rng(1).normal(size=(2 * BEAMS, 2, 5, 4)).astype(np.float32)
    cache = {
        "layer": {
            "cached_key": jnp.asarray(key),
            "cached_value": jnp.asarray(-key),
            "cross_key": jnp.zeros((2 * BEAMS, 2, 7, 4)),
        },
        "positions": jnp.zeros((2 * BEAMS,), jnp.int32),
    }
    out = add_beam_rows(cache, BEAMS)
    rows = np.asarray(out["layer"]["beam_rows"])
    assert rows.shape == (2 * BEAMS, 5, BEAMS)
    for j in range(2 * BEAMS):
        assert rows[j, :, j % BEAMS].all() and rows[j].sum() == 5
        # Row j of the flat cache is beam r = j % R of example j // R: slot s at s * R + r.
        keys = np.asarray(out["layer"]["cached_key"])[j // BEAMS, :, :, j % BEAMS :: BEAMS]
        np.testing.assert_array_equal(keys, key[j].transpose(0, 2, 1))
        values = np.asarray(out["layer"]["cached_value"])[j // BEAMS, :, j % BEAMS :: BEAMS]
        np.testing.assert_array_equal(values, -key[j])
    flags = {
        jax.tree_util.keystr(p): is_beam_read_cache(p)
        for p, _ in jax.tree_util.tree_leaves_with_path(out)
    }
    assert flags == {
        "['layer']['beam_rows']": False,
        "['layer']['cached_key']": True,
        "['layer']['cached_value']": True,
        "['layer']['cross_key']": True,
        "['positions']": False,
    }
