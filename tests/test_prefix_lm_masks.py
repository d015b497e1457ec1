"""Prefix-LM attention masks (bidirectional prefix, then causal) in every implementation."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax.ops import attention
from transformer_jax.ops.attention import (
    dot_product_attention,
    make_attention_mask,
    prefix_from_lengths,
)

IMPLS = ("xla", "chunked")
SMALL_CHUNKS = {"query_chunk_size": 4, "key_chunk_size": 5}


# ----------------------------------------------------------------------- reference


def reference_mask(seg: np.ndarray, prefix_len_per_segment: list[dict[int, int]]) -> np.ndarray:
    """``[B, L, L]`` visibility from the prefix-LM description, one token at a time.

    A token at position p of a segment whose prefix has P tokens sees the first P
    tokens of its segment when p < P, and every earlier-or-equal token of its
    segment otherwise. Padding (segment 0) sees nothing.
    """
    B, L = seg.shape
    mask = np.zeros((B, L, L), bool)
    for b in range(B):
        starts = {}
        for i, s in enumerate(seg[b]):
            starts.setdefault(int(s), i)
        for t in range(L):
            s = int(seg[b, t])
            if s == 0:
                continue
            p, P = t - starts[s], prefix_len_per_segment[b].get(s, 0)
            for u in range(L):
                if seg[b, u] != s:
                    continue
                pu = u - starts[s]
                mask[b, t, u] = pu < P if p < P else pu <= p
    return mask


def reference_attention(q, k, v, mask_BTS: np.ndarray) -> np.ndarray:
    """float64 softmax(Q K^T / sqrt(H)) V over the visible keys; empty rows are zero."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    B, T, N, H = q.shape
    K = k.shape[2]
    k = np.repeat(k, N // K, axis=2)
    v = np.repeat(v, N // K, axis=2)
    out = np.zeros((B, T, N, H))
    for b in range(B):
        for t in range(T):
            visible = mask_BTS[b, t]
            if not visible.any():
                continue
            for n in range(N):
                logits = k[b, visible, n] @ q[b, t, n] / np.sqrt(H)
                w = np.exp(logits - logits.max())
                out[b, t, n] = (w / w.sum()) @ v[b, visible, n]
    return out


def positions_in_segment(seg: np.ndarray) -> np.ndarray:
    pos = np.zeros_like(seg)
    for b, row in enumerate(seg):
        for i in range(1, len(row)):
            pos[b, i] = pos[b, i - 1] + 1 if row[i] == row[i - 1] else 0
    return pos


def prefix_case(name: str, seed: int = 0) -> dict:
    """Inputs, keyword arguments and the independent NumPy mask for a named case."""
    rng = np.random.default_rng(seed)
    L, N, K, H = 13, 2, 2, 8
    if name == "rows":  # one sequence per row, prefixes of every size incl. 0 and all
        seg = np.ones((4, L), np.int32)
        lengths = [{1: 5}, {1: 0}, {1: L}, {1: 1}]
    elif name == "padding":  # prefix, then causal tokens, then padding
        seg = (np.arange(L)[None] < np.array([[9], [L], [4]])).astype(np.int32)
        lengths = [{1: 3}, {1: 7}, {1: 4}]
    elif name == "packed":  # several segments per row, each with its own prefix
        seg = np.array(
            [[1, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 0], [1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 0, 0]],
            np.int32,
        )
        lengths = [{1: 2, 2: 4, 3: 0}, {1: 2, 2: 3, 3: 1}]
    elif name == "gqa":
        seg = np.array([[1] * 10 + [0] * 3, [1] * 6 + [2] * 7], np.int32)
        lengths = [{1: 4}, {1: 3, 2: 5}]
        N, K = 4, 1
    else:
        raise AssertionError(name)
    B = seg.shape[0]
    pos = positions_in_segment(seg)
    per_token = np.array([[lengths[b].get(int(s), 0) for s in seg[b]] for b in range(B)])
    prefix = np.asarray(prefix_from_lengths(per_token, pos))
    q = jnp.asarray(rng.normal(size=(B, L, N, H)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(B, L, K, H)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(B, L, K, H)), jnp.float32)
    kwargs = dict(
        q_segment_ids=seg,
        kv_segment_ids=seg,
        q_positions=pos,
        kv_positions=pos,
        q_prefix=prefix,
        kv_prefix=prefix,
        causal=True,
    )
    return {"q": q, "k": k, "v": v, "kwargs": kwargs, "mask": reference_mask(seg, lengths)}


def attend(q, k, v, **kwargs) -> jax.Array:
    return jax.jit(functools.partial(dot_product_attention, **kwargs))(q, k, v)


def loss_grads(impl: str, w, q, k, v, **kwargs):
    def loss(q, k, v):
        out = dot_product_attention(q, k, v, implementation=impl, **kwargs)
        return jnp.sum(out.astype(jnp.float32) * w)

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)


CASES = ("rows", "padding", "packed", "gqa")


# -------------------------------------------------------------------------- masks


@pytest.mark.parametrize("name", CASES)
def test_make_attention_mask_matches_description(name: str) -> None:
    case = prefix_case(name)
    kw = case["kwargs"]
    mask = make_attention_mask(
        kw["q_segment_ids"],
        kw["kv_segment_ids"],
        kw["q_positions"],
        kw["kv_positions"],
        causal=True,
        q_prefix=kw["q_prefix"],
        kv_prefix=kw["kv_prefix"],
    )
    np.testing.assert_array_equal(mask[:, 0], case["mask"])
    # The prefix really changes the mask (the cases are not plain causal).
    plain = make_attention_mask(
        kw["q_segment_ids"], kw["kv_segment_ids"], kw["q_positions"], kw["kv_positions"], True
    )
    assert not np.array_equal(mask, plain)


def test_prefix_from_lengths() -> None:
    pos = np.array([[0, 1, 2, 3], [0, 1, 0, 1]])
    np.testing.assert_array_equal(
        prefix_from_lengths(np.array([2, 0]), pos), [[1, 1, 0, 0], [0, 0, 0, 0]]
    )
    np.testing.assert_array_equal(
        prefix_from_lengths(np.array([[9, 9, 9, 9], [1, 1, 2, 2]]), pos),
        [[1, 1, 1, 1], [1, 0, 1, 1]],
    )
    with pytest.raises(ValueError, match=r"prefix_lengths must be \[B\] or \[B, L\]"):
        prefix_from_lengths(np.array([1, 2, 3]), pos)


# ------------------------------------------------------------------------ forward


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("impl", IMPLS)
def test_matches_float64_reference(impl: str, name: str) -> None:
    case = prefix_case(name)
    out = attend(
        case["q"], case["k"], case["v"], implementation=impl, **SMALL_CHUNKS, **case["kwargs"]
    )
    expected = reference_attention(case["q"], case["k"], case["v"], case["mask"])
    np.testing.assert_allclose(out, expected, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_prefix_is_plain_causal(impl: str) -> None:
    case = prefix_case("packed", seed=1)
    kw = dict(case["kwargs"], implementation=impl, **SMALL_CHUNKS)
    empty = np.zeros_like(kw["q_prefix"])
    with_empty = attend(
        case["q"], case["k"], case["v"], **dict(kw, q_prefix=empty, kv_prefix=empty)
    )
    plain = attend(case["q"], case["k"], case["v"], **dict(kw, q_prefix=None, kv_prefix=None))
    np.testing.assert_array_equal(with_empty, plain)


@pytest.mark.parametrize("impl", IMPLS)
def test_whole_segment_prefix_is_bidirectional(impl: str) -> None:
    case = prefix_case("packed", seed=2)
    kw = case["kwargs"]
    everything = kw["q_segment_ids"] != 0
    prefixed = attend(
        case["q"], case["k"], case["v"], implementation=impl,
        **dict(kw, q_prefix=everything, kv_prefix=everything),
    )  # fmt: skip
    bidirectional = attend(
        case["q"], case["k"], case["v"], implementation="xla",
        q_segment_ids=kw["q_segment_ids"], kv_segment_ids=kw["kv_segment_ids"],
    )  # fmt: skip
    np.testing.assert_allclose(prefixed, bidirectional, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("chunks", [(1, 1), (3, 7), (13, 13)])
def test_chunked_block_sizes(chunks: tuple[int, int]) -> None:
    case = prefix_case("packed", seed=3)
    out = attend(
        case["q"], case["k"], case["v"], implementation="chunked",
        query_chunk_size=chunks[0], key_chunk_size=chunks[1], **case["kwargs"],
    )  # fmt: skip
    expected = reference_attention(case["q"], case["k"], case["v"], case["mask"])
    np.testing.assert_allclose(out, expected, atol=2e-6, rtol=1e-5)


def test_auto_on_cpu() -> None:
    case = prefix_case("padding", seed=4)
    out = dot_product_attention(case["q"], case["k"], case["v"], **case["kwargs"])
    expected = reference_attention(case["q"], case["k"], case["v"], case["mask"])
    np.testing.assert_allclose(out, expected, atol=2e-6, rtol=1e-5)


def test_cached_suffix_queries_see_the_prefix() -> None:
    """Decoding: new (non-prefix) queries against a cache holding prefix keys."""
    rng = np.random.default_rng(5)
    S, P = 12, 4
    q = jnp.asarray(rng.normal(size=(1, 2, 2, 8)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(1, S, 2, 8)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(1, S, 2, 8)), jnp.float32)
    q_pos = np.array([[6, 7]], np.int32)
    kv_seg = (np.arange(S)[None] <= 7).astype(np.int32)
    kv_prefix = np.arange(S)[None] < P
    mask = np.zeros((1, 2, S), bool)
    mask[0, 0, :7] = mask[0, 1, :8] = True
    expected = reference_attention(q, k, v, mask)
    for impl in IMPLS:
        out = attend(
            q, k, v, implementation=impl, causal=True, q_positions=q_pos,
            kv_segment_ids=kv_seg, q_prefix=np.zeros((1, 2), bool), kv_prefix=kv_prefix,
            key_chunk_size=5,
        )  # fmt: skip
        np.testing.assert_allclose(out, expected, atol=2e-6, rtol=1e-5)


# --------------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", CASES)
def test_chunked_gradients_match_xla(name: str) -> None:
    case = prefix_case(name, seed=6)
    w = jnp.asarray(np.random.default_rng(7).normal(size=case["q"].shape), jnp.float32)
    args = (case["q"], case["k"], case["v"])
    xla = loss_grads("xla", w, *args, **case["kwargs"])
    chunked = loss_grads("chunked", w, *args, **SMALL_CHUNKS, **case["kwargs"])
    for g_xla, g_chunked in zip(xla, chunked, strict=True):
        assert np.all(np.isfinite(g_chunked))
        np.testing.assert_allclose(g_chunked, g_xla, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradient_matches_float64_finite_difference(impl: str) -> None:
    """Directional derivative of the float64 reference vs the JAX gradient."""
    case = prefix_case("packed", seed=8)
    rng = np.random.default_rng(9)
    args = [np.asarray(case[x], np.float64) for x in "qkv"]
    w = rng.normal(size=args[0].shape)
    dirs = [rng.normal(size=a.shape) for a in args]

    def ref_loss(eps: float) -> float:
        moved = [a + eps * d for a, d in zip(args, dirs, strict=True)]
        return float(np.sum(w * reference_attention(*moved, case["mask"])))

    eps = 1e-5
    numeric = (ref_loss(eps) - ref_loss(-eps)) / (2 * eps)
    grads = loss_grads(
        impl, jnp.asarray(w, jnp.float32), case["q"], case["k"], case["v"],
        **SMALL_CHUNKS, **case["kwargs"],
    )  # fmt: skip
    analytic = sum(float(np.sum(np.asarray(g, np.float64) * d)) for g, d in zip(grads, dirs))
    assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-4)


# ----------------------------------------------------------------- cudnn, splash


@pytest.mark.gpu_only
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a CUDA GPU")
def test_cudnn_matches_xla() -> None:
    rng = np.random.default_rng(10)
    B, L = 2, 64
    seg = np.ones((B, L), np.int32)
    seg[1, 50:] = 0
    prefix = prefix_from_lengths(np.array([20, 7]), np.broadcast_to(np.arange(L), (B, L)))
    q, k, v = (jnp.asarray(rng.normal(size=(B, L, 2, 64)), jnp.bfloat16) for _ in range(3))
    kw = dict(q_segment_ids=seg, kv_segment_ids=seg, causal=True, q_prefix=prefix, kv_prefix=prefix)
    out = attend(q, k, v, implementation="cudnn", **kw)
    expected = attend(q, k, v, implementation="xla", **kw)
    np.testing.assert_allclose(
        out.astype(jnp.float32), expected.astype(jnp.float32), atol=2e-2, rtol=2e-2
    )


def test_splash_kernel_in_interpret_mode() -> None:
    """The TPU splash path (two kernel calls), run through the Pallas interpreter on CPU."""
    rng = np.random.default_rng(11)
    L = 128
    q, k, v = (jnp.asarray(rng.normal(size=(1, L, 1, 8)), jnp.float32) for _ in range(3))
    # Two packed segments with prefixes of 40 and 0 tokens, then padding.
    seg = np.array([[1] * 70 + [2] * 50 + [0] * 8], np.int32)
    prefix = np.array([[True] * 40 + [False] * 88]) & (seg == 1)
    lengths = [{1: 40, 2: 0}]
    w = jnp.asarray(rng.normal(size=q.shape), jnp.float32)

    def splash_loss(q, k, v):
        out = attention._splash_attention(
            q, k, v, jnp.asarray(seg), jnp.asarray(seg), True, 128, 128,
            q_prefix=jnp.asarray(prefix), kv_prefix=jnp.asarray(prefix), interpret=True,
        )  # fmt: skip
        return jnp.sum(out * w), out

    (_, out), grads = jax.value_and_grad(splash_loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    np.testing.assert_allclose(
        out, reference_attention(q, k, v, reference_mask(seg, lengths)), atol=2e-6, rtol=1e-5
    )
    kw = dict(q_segment_ids=seg, kv_segment_ids=seg, causal=True, q_prefix=prefix, kv_prefix=prefix)
    for g, g_xla in zip(grads, loss_grads("xla", w, q, k, v, **kw), strict=True):
        np.testing.assert_allclose(g, g_xla, atol=1e-5, rtol=1e-5)


# -------------------------------------------------------------------------- errors


def test_prefix_errors() -> None:
    q = jnp.zeros((2, 4, 2, 8))
    pre = np.zeros((2, 4), bool)
    with pytest.raises(ValueError, match="q_prefix and kv_prefix must be given together"):
        dot_product_attention(q, q, q, causal=True, q_prefix=pre)
    with pytest.raises(ValueError, match="need causal=True"):
        dot_product_attention(q, q, q, q_prefix=pre, kv_prefix=pre)
    with pytest.raises(ValueError, match=r"kv_prefix must have shape \(2, 4\)"):
        dot_product_attention(q, q, q, causal=True, q_prefix=pre, kv_prefix=pre[:, :3])
    with pytest.raises(ValueError, match="q_prefix must be a bool or integer array"):
        dot_product_attention(q, q, q, causal=True, q_prefix=pre * 1.0, kv_prefix=pre)
