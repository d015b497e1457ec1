"""Tests for transformer_jax.ops.attention against a float64 NumPy reference."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax.ops import attention
from transformer_jax.ops.attention import dot_product_attention, make_attention_mask

IMPLS = ("xla", "chunked")


# ----------------------------------------------------------------------- reference


def reference_attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    q_seg: np.ndarray | None = None,
    kv_seg: np.ndarray | None = None,
    q_pos: np.ndarray | None = None,
    kv_pos: np.ndarray | None = None,
    causal: bool = False,
    bias: np.ndarray | None = None,
) -> np.ndarray:
    """Row-by-row float64 attention; rows without visible keys are zero."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    B, T, N, H = q.shape
    S, K = k.shape[1], k.shape[2]
    k = np.repeat(k, N // K, axis=2)
    v = np.repeat(v, N // K, axis=2)
    q_seg = np.ones((B, T), int) if q_seg is None else np.asarray(q_seg)
    kv_seg = np.ones((B, S), int) if kv_seg is None else np.asarray(kv_seg)
    q_pos = np.broadcast_to(np.arange(T), (B, T)) if q_pos is None else np.asarray(q_pos)
    kv_pos = np.broadcast_to(np.arange(S), (B, S)) if kv_pos is None else np.asarray(kv_pos)
    bias = None if bias is None else np.broadcast_to(np.asarray(bias, np.float64), (B, N, T, S))
    out = np.zeros((B, T, N, H))
    for b in range(B):
        for t in range(T):
            visible = (kv_seg[b] == q_seg[b, t]) & (q_seg[b, t] != 0)
            if causal:
                visible &= kv_pos[b] <= q_pos[b, t]
            if not visible.any():
                continue
            for n in range(N):
                logits = k[b, visible, n] @ q[b, t, n] / np.sqrt(H)
                if bias is not None:
                    logits = logits + bias[b, n, t, visible]
                w = np.exp(logits - logits.max())
                out[b, t, n] = (w / w.sum()) @ v[b, visible, n]
    return out


def random_qkv(
    rng: np.random.Generator, B: int, T: int, S: int, N: int, K: int, H: int, dtype=jnp.float32
) -> tuple[jax.Array, jax.Array, jax.Array]:
    q = rng.normal(size=(B, T, N, H))
    k = rng.normal(size=(B, S, K, H))
    v = rng.normal(size=(B, S, K, H))
    return tuple(jnp.asarray(x, dtype) for x in (q, k, v))


def packed_segments(rng: np.random.Generator, B: int, L: int, max_segments: int = 3) -> np.ndarray:
    """Rows of consecutive segments 1..n followed by 0 padding."""
    rows = []
    for _ in range(B):
        cuts = np.sort(rng.choice(np.arange(1, L), size=max_segments, replace=False))
        ids = np.searchsorted(cuts, np.arange(L), side="right") + 1
        ids[ids > max_segments] = 0
        rows.append(ids)
    return np.stack(rows).astype(np.int32)


def packed_positions(seg: np.ndarray) -> np.ndarray:
    """Position within each segment."""
    pos = np.zeros_like(seg)
    for b, row in enumerate(seg):
        for i in range(1, len(row)):
            pos[b, i] = pos[b, i - 1] + 1 if row[i] == row[i - 1] else 0
    return pos


def case_inputs(name: str, seed: int = 0) -> dict:
    """Random inputs and keyword arguments for a named masking scenario."""
    rng = np.random.default_rng(seed)
    T = S = 13
    N = K = 2
    kwargs: dict = {}
    if name == "no_mask":
        T, S = 11, 19
    elif name == "padding":
        T, S = 11, 19
        kwargs["q_segment_ids"] = (np.arange(T)[None] < np.array([[9], [11]])).astype(np.int32)
        kwargs["kv_segment_ids"] = (np.arange(S)[None] < np.array([[19], [6]])).astype(np.int32)
    elif name == "packed":
        seg = packed_segments(rng, 2, T)
        kwargs.update(q_segment_ids=seg, kv_segment_ids=seg)
    elif name == "causal":
        kwargs["causal"] = True
    elif name == "causal_packed":
        seg = packed_segments(rng, 2, T)
        pos = packed_positions(seg)
        kwargs.update(
            q_segment_ids=seg, kv_segment_ids=seg, q_positions=pos, kv_positions=pos, causal=True
        )
    elif name == "gqa":
        N, K = 4, 2
        kwargs["causal"] = True
    elif name == "mqa":
        N, K = 4, 1
        seg = packed_segments(rng, 2, T)
        kwargs.update(q_segment_ids=seg, kv_segment_ids=seg)
    else:
        raise AssertionError(name)
    q, k, v = random_qkv(rng, 2, T, S, N, K, 8)
    return {"q": q, "k": k, "v": v, "kwargs": kwargs}


def reference_for(case: dict) -> np.ndarray:
    kw = case["kwargs"]
    return reference_attention(
        case["q"],
        case["k"],
        case["v"],
        kw.get("q_segment_ids"),
        kw.get("kv_segment_ids"),
        kw.get("q_positions"),
        kw.get("kv_positions"),
        kw.get("causal", False),
        kw.get("bias"),
    )


def weighted_loss(impl: str, w: jax.Array, **kwargs):
    """Scalar loss sum(w * attention(q, k, v)) as a function of (q, k, v)."""

    def loss(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        out = dot_product_attention(q, k, v, implementation=impl, **kwargs)
        return jnp.sum(out.astype(jnp.float32) * w)

    return loss


def attend(q: jax.Array, k: jax.Array, v: jax.Array, **kwargs) -> jax.Array:
    """Jitted attention; one compilation per call site keeps the suite fast."""
    return jax.jit(functools.partial(dot_product_attention, **kwargs))(q, k, v)


def loss_grads(
    impl: str, w: jax.Array | float, q: jax.Array, k: jax.Array, v: jax.Array, **kwargs
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Jitted gradients of ``weighted_loss`` w.r.t. (q, k, v)."""
    return jax.jit(jax.grad(weighted_loss(impl, w, **kwargs), argnums=(0, 1, 2)))(q, k, v)


CASES = ("no_mask", "padding", "packed", "causal", "causal_packed", "gqa", "mqa")
SMALL_CHUNKS = {"query_chunk_size": 4, "key_chunk_size": 5}


# ------------------------------------------------------------------------ forward


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("impl", IMPLS)
def test_matches_reference(impl: str, name: str) -> None:
    case = case_inputs(name)
    out = attend(
        case["q"], case["k"], case["v"], implementation=impl, **SMALL_CHUNKS, **case["kwargs"]
    )
    assert out.shape == case["q"].shape and out.dtype == jnp.float32
    np.testing.assert_allclose(out, reference_for(case), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("chunks", [(1, 1), (3, 7), (6, 4), (13, 21), (64, 64)])
def test_chunk_sizes_that_do_not_divide(chunks: tuple[int, int]) -> None:
    case = case_inputs("causal_packed", seed=1)
    out = attend(
        case["q"],
        case["k"],
        case["v"],
        implementation="chunked",
        query_chunk_size=chunks[0],
        key_chunk_size=chunks[1],
        **case["kwargs"],
    )
    np.testing.assert_allclose(out, reference_for(case), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("q_pos", [[[7], [2]], [[5, 6, 7], [0, 1, 2]]])
def test_causal_query_at_offset_into_cache(impl: str, q_pos: list) -> None:
    rng = np.random.default_rng(2)
    q_pos = np.asarray(q_pos, np.int32)
    B, T = q_pos.shape
    S = 16
    q, k, v = random_qkv(rng, B, T, S, 4, 2, 8)
    # Cache slots past the newest position are empty.
    kv_seg = (np.arange(S)[None] <= q_pos[:, -1:]).astype(np.int32)
    kw = dict(q_segment_ids=np.ones((B, T), np.int32), kv_segment_ids=kv_seg, causal=True)
    out = attend(q, k, v, q_positions=q_pos, implementation=impl, key_chunk_size=5, **kw)
    expected = reference_attention(q, k, v, kw["q_segment_ids"], kv_seg, q_pos, None, True)
    np.testing.assert_allclose(out, expected, atol=2e-6, rtol=1e-5)
    # The empty slots alone enforce nothing for earlier queries; positions must.
    if T > 1:
        unmasked = reference_attention(q, k, v, None, kv_seg, None, None, False)
        assert not np.allclose(out[:, 0], unmasked[:, 0], atol=1e-3)


@pytest.mark.parametrize("impl", IMPLS)
def test_one_sided_segment_ids_default_to_ones(impl: str) -> None:
    rng = np.random.default_rng(3)
    q, k, v = random_qkv(rng, 2, 5, 7, 2, 2, 8)
    kv_seg = np.array([[1, 1, 0, 1, 0, 1, 1], [0, 0, 1, 1, 1, 0, 0]], np.int32)
    out = attend(q, k, v, kv_segment_ids=kv_seg, implementation=impl)
    np.testing.assert_allclose(
        out, reference_attention(q, k, v, None, kv_seg), atol=2e-6, rtol=1e-5
    )


def test_xla_bias() -> None:
    rng = np.random.default_rng(4)
    q, k, v = random_qkv(rng, 2, 6, 9, 4, 2, 8)
    seg = np.array([[1] * 9, [1] * 5 + [0] * 4], np.int32)
    for bias in (rng.normal(size=(1, 4, 1, 9)), rng.normal(size=(2, 1, 6, 9))):
        out = attend(
            q, k, v, kv_segment_ids=seg, bias=bias.astype(np.float32), implementation="xla"
        )
        expected = reference_attention(q, k, v, None, seg, bias=bias)
        np.testing.assert_allclose(out, expected, atol=2e-6, rtol=1e-5)


def test_auto_on_cpu() -> None:
    case = case_inputs("causal_packed")
    out = dot_product_attention(case["q"], case["k"], case["v"], **case["kwargs"])
    np.testing.assert_allclose(out, reference_for(case), atol=2e-6, rtol=1e-5)
    small = jax.ShapeDtypeStruct((1, 64, 2, 8), jnp.float32)
    big = jax.ShapeDtypeStruct((1, 4096, 2, 8), jnp.float32)
    select = attention._select_implementation
    assert select(small, small, small, has_bias=False, positions_matter=False) == "xla"
    assert select(big, big, big, has_bias=False, positions_matter=False) == "chunked"
    assert select(big, big, big, has_bias=True, positions_matter=False) == "xla"
    # From 1,024 x 1,024 causal scores on, the chunked kernel skips enough blocks to win.
    mid = jax.ShapeDtypeStruct((1, 1024, 2, 8), jnp.float32)
    kw = dict(has_bias=False, positions_matter=False)
    assert select(mid, mid, mid, causal=True, **kw) == "chunked"
    assert select(mid, mid, mid, causal=False, **kw) == "xla"
    below = jax.ShapeDtypeStruct((1, 1023, 2, 8), jnp.float32)
    assert select(below, mid, mid, causal=True, **kw) == "xla"


def test_make_attention_mask() -> None:
    q_seg = np.array([[1, 1, 2, 0]], np.int32)
    kv_seg = np.array([[1, 2, 2, 0, 1]], np.int32)
    q_pos = np.array([[0, 3, 1, 2]], np.int32)
    mask = make_attention_mask(q_seg, kv_seg, q_pos, None, causal=True)
    expected = (
        (q_seg[:, :, None] == kv_seg[:, None, :])
        & (q_seg[:, :, None] != 0)
        & (np.arange(5)[None, None, :] <= q_pos[:, :, None])
    )
    assert mask.shape == (1, 1, 4, 5) and mask.dtype == jnp.bool_
    np.testing.assert_array_equal(mask[:, 0], expected)
    same_segment = (q_seg[:, :, None] == kv_seg[:, None, :]) & (q_seg[:, :, None] != 0)
    np.testing.assert_array_equal(make_attention_mask(q_seg, kv_seg)[:, 0], same_segment)


# ---------------------------------------------------------------- masked rows, dtype


@pytest.mark.parametrize("impl", IMPLS)
def test_fully_masked_rows_are_zero_with_finite_gradients(impl: str) -> None:
    rng = np.random.default_rng(5)
    q, k, v = random_qkv(rng, 2, 6, 10, 2, 1, 8)
    # Segment 3 and padding (0) queries see nothing; batch 1 has no valid key at all.
    q_seg = np.array([[1, 3, 0, 2, 2, 3], [1, 1, 2, 0, 2, 1]], np.int32)
    kv_seg = np.array([[1, 1, 2, 2, 0, 1, 2, 0, 0, 0], [0] * 10], np.int32)
    kw = dict(q_segment_ids=q_seg, kv_segment_ids=kv_seg, causal=True, key_chunk_size=4)
    out = attend(q, k, v, implementation=impl, **kw)
    dead = np.array([[False, True, True, False, False, True], [True] * 6])
    assert np.all(np.asarray(out)[dead] == 0.0)
    np.testing.assert_allclose(
        out, reference_attention(q, k, v, q_seg, kv_seg, causal=True), atol=2e-6, rtol=1e-5
    )
    w = jnp.asarray(rng.normal(size=q.shape), jnp.float32)
    grads = loss_grads(impl, w, q, k, v, **kw)
    for g in grads:
        assert np.all(np.isfinite(g))
    assert np.all(np.asarray(grads[0])[dead] == 0.0)
    assert np.all(np.asarray(grads[1])[1] == 0.0) and np.all(np.asarray(grads[2])[1] == 0.0)


@pytest.mark.parametrize("impl", IMPLS)
def test_bfloat16_inputs(impl: str) -> None:
    case = case_inputs("causal_packed", seed=6)
    q, k, v = (x.astype(jnp.bfloat16) for x in (case["q"], case["k"], case["v"]))
    out = attend(q, k, v, implementation=impl, **SMALL_CHUNKS, **case["kwargs"])
    assert out.dtype == jnp.bfloat16
    rounded = dict(case, q=q.astype(jnp.float32), k=k.astype(jnp.float32), v=v.astype(jnp.float32))
    np.testing.assert_allclose(
        out.astype(jnp.float32), reference_for(rounded), atol=3e-2, rtol=2e-2
    )
    grads = loss_grads(impl, 1.0, q, k, v, **SMALL_CHUNKS, **case["kwargs"])
    assert all(g.dtype == jnp.bfloat16 and np.all(np.isfinite(g)) for g in grads)


@pytest.mark.parametrize("impl", IMPLS)
def test_jit_matches_eager(impl: str) -> None:
    case = case_inputs("gqa", seed=7)
    kwargs = dict(case["kwargs"], implementation=impl, **SMALL_CHUNKS)
    eager = dot_product_attention(case["q"], case["k"], case["v"], **kwargs)
    jitted = jax.jit(lambda q, k, v: dot_product_attention(q, k, v, **kwargs))(
        case["q"], case["k"], case["v"]
    )
    np.testing.assert_allclose(jitted, eager, atol=1e-6, rtol=1e-6)


# --------------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", ["no_mask", "padding", "causal_packed", "mqa"])
def test_chunked_gradients_match_xla(name: str) -> None:
    case = case_inputs(name, seed=8)
    w = jnp.asarray(np.random.default_rng(9).normal(size=case["q"].shape), jnp.float32)
    args = (case["q"], case["k"], case["v"])
    xla_grads = loss_grads("xla", w, *args, **case["kwargs"])
    chunked_grads = loss_grads("chunked", w, *args, **SMALL_CHUNKS, **case["kwargs"])
    for g_xla, g_chunked in zip(xla_grads, chunked_grads, strict=True):
        np.testing.assert_allclose(g_chunked, g_xla, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", ["causal_packed", "gqa"])
def test_gradient_matches_float64_finite_difference(impl: str, name: str) -> None:
    """Directional derivative of the float64 reference vs the JAX gradient."""
    case = case_inputs(name, seed=10)
    rng = np.random.default_rng(11)
    args = [np.asarray(case[x], np.float64) for x in "qkv"]
    w = rng.normal(size=args[0].shape)
    dirs = [rng.normal(size=a.shape) for a in args]

    def ref_loss(eps: float) -> float:
        moved = [a + eps * d for a, d in zip(args, dirs, strict=True)]
        return float(np.sum(w * reference_for(dict(case, q=moved[0], k=moved[1], v=moved[2]))))

    eps = 1e-5
    numeric = (ref_loss(eps) - ref_loss(-eps)) / (2 * eps)
    w32 = jnp.asarray(w, jnp.float32)
    grads = loss_grads(impl, w32, case["q"], case["k"], case["v"], **SMALL_CHUNKS, **case["kwargs"])
    analytic = sum(float(np.sum(np.asarray(g, np.float64) * d)) for g, d in zip(grads, dirs))
    assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-4)


def test_chunked_under_vmap_and_grad() -> None:
    """Per-example calls mapped with vmap agree with the batched call, values and grads."""
    case = case_inputs("causal_packed", seed=12)
    names = ("q_segment_ids", "kv_segment_ids", "q_positions", "kv_positions")
    ids = tuple(jnp.asarray(case["kwargs"][name]) for name in names)

    def per_example(q, k, v, *ids_1d):
        id_kwargs = {name: x[None] for name, x in zip(names, ids_1d, strict=True)}
        out = dot_product_attention(
            q[None], k[None], v[None], causal=True, implementation="chunked",
            **id_kwargs, **SMALL_CHUNKS,
        )  # fmt: skip
        return out[0]

    args = (case["q"], case["k"], case["v"], *ids)
    out = jax.jit(jax.vmap(per_example))(*args)
    np.testing.assert_allclose(out, reference_for(case), atol=2e-6, rtol=1e-5)
    per_example_grad = jax.grad(lambda *a: per_example(*a).sum(), argnums=(0, 1, 2))
    vmapped = jax.jit(jax.vmap(per_example_grad))(*args)
    batched = loss_grads("xla", 1.0, *args[:3], **case["kwargs"])
    for g_v, g_b in zip(vmapped, batched, strict=True):
        np.testing.assert_allclose(g_v, g_b, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------- memory use


def _all_shapes(jaxpr: jex.Jaxpr) -> Iterator[tuple[int, ...]]:
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            yield tuple(getattr(var.aval, "shape", ()))
    for sub in jex.subjaxprs(jaxpr):
        yield from _all_shapes(sub)


def _has_score_matrix(impl: str, L: int) -> bool:
    q = jax.ShapeDtypeStruct((1, L, 2, 8), jnp.float32)
    loss = weighted_loss(impl, 1.0, causal=True, query_chunk_size=128, key_chunk_size=128)
    fwd_bwd = jax.value_and_grad(loss, argnums=(0, 1, 2))
    shapes = list(_all_shapes(jax.make_jaxpr(fwd_bwd)(q, q, q).jaxpr))
    in_jaxpr = any(sum(d == L for d in shape) >= 2 for shape in shapes)
    in_hlo = f"{L}x{L}" in jax.jit(fwd_bwd).lower(q, q, q).as_text()
    return in_jaxpr or in_hlo


def test_chunked_never_materialises_full_scores() -> None:
    assert _has_score_matrix("xla", 1024)  # the probe does detect [T, S] arrays
    assert not _has_score_matrix("chunked", 1024)


# -------------------------------------------------------------------------- splash


def test_rows_with_visible_key_matches_mask() -> None:
    rng = np.random.default_rng(13)
    q_seg = jnp.asarray(rng.integers(0, 4, size=(3, 17)), jnp.int32)
    kv_seg = jnp.asarray(rng.integers(0, 4, size=(3, 17)), jnp.int32)
    for causal in (False, True):
        mask = make_attention_mask(q_seg, kv_seg, causal=causal)
        np.testing.assert_array_equal(
            attention._rows_with_visible_key(q_seg, kv_seg, causal), mask[:, 0].any(-1)
        )


def test_splash_kernel_in_interpret_mode() -> None:
    """The TPU splash path, run through the Pallas interpreter on CPU."""
    rng = np.random.default_rng(14)
    q, k, v = random_qkv(rng, 1, 128, 128, 2, 1, 8)
    q_seg = jnp.asarray(rng.integers(0, 4, size=(1, 128)), jnp.int32)
    kv_seg = jnp.asarray(rng.integers(0, 3, size=(1, 128)), jnp.int32)
    w = jnp.asarray(rng.normal(size=q.shape), jnp.float32)

    def splash_loss(q, k, v):
        out = attention._splash_attention(q, k, v, q_seg, kv_seg, True, 128, 128, interpret=True)
        return jnp.sum(out * w), out

    kw = dict(q_segment_ids=q_seg, kv_segment_ids=kv_seg, causal=True)
    (_, out), grads = jax.value_and_grad(splash_loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    np.testing.assert_allclose(
        out, reference_attention(q, k, v, q_seg, kv_seg, causal=True), atol=2e-6, rtol=1e-5
    )
    xla_grads = loss_grads("xla", w, q, k, v, **kw)
    for g, g_xla in zip(grads, xla_grads, strict=True):
        np.testing.assert_allclose(g, g_xla, atol=1e-5, rtol=1e-5)


# ------------------------------------------------- cuDNN's causal kernel: when it is exact


def _np_keys_at_or_before_queries(mask: np.ndarray) -> bool:
    for b, _, i, j in zip(*np.nonzero(mask), strict=True):
        del b
        if j > i:
            return False
    return True


@pytest.mark.parametrize(
    "case", ["packed", "restarted positions", "reversed positions", "prefix", "offset query"]
)
def test_causal_kernel_is_taken_only_where_the_mask_is_index_causal(case: str) -> None:
    """cuDNN is told `is_causal` only where no visible key lies after its query by index;
    the check is compared with a NumPy scan of the dense mask."""
    T = 12
    seg = np.array([[1] * 5 + [2] * 4 + [0] * 3, [3] * 12], np.int32)
    arange = np.broadcast_to(np.arange(T, dtype=np.int32), (2, T))
    restarted = np.array([list(range(5)) + list(range(4)) + [0] * 3, list(range(12))], np.int32)
    kw: dict = dict(causal=True)
    q_seg, kv_seg, q_pos, kv_pos = seg, seg, arange, arange
    if case == "restarted positions":  # packed documents, each from position 0
        q_pos = kv_pos = restarted
    elif case == "reversed positions":
        q_pos = kv_pos = arange[:, ::-1].copy()
    elif case == "prefix":  # bidirectional over the first three tokens
        prefix = np.zeros((2, T), bool)
        prefix[:, :3] = True
        kw.update(q_prefix=prefix, kv_prefix=prefix)
    elif case == "offset query":  # one query at position 4 against the whole cache
        q_seg, q_pos = seg[:, 4:5], arange[:, 4:5]
    mask = make_attention_mask(
        jnp.asarray(q_seg), jnp.asarray(kv_seg), jnp.asarray(q_pos), jnp.asarray(kv_pos), **kw
    )
    expected = _np_keys_at_or_before_queries(np.asarray(mask))
    assert expected == (case in ("packed", "restarted positions"))
    assert bool(attention._keys_at_or_before_queries(mask)) == expected


# -------------------------------------------------------------------------- errors


def test_unknown_implementation() -> None:
    q = jnp.zeros((1, 4, 2, 8))
    with pytest.raises(ValueError, match=r"'flash'.*'chunked'"):
        dot_product_attention(q, q, q, implementation="flash")


@pytest.mark.parametrize("impl", ["chunked", "cudnn", "splash"])
def test_bias_needs_xla(impl: str) -> None:
    q = jnp.zeros((1, 4, 2, 8))
    with pytest.raises(ValueError, match="bias is only supported by implementation='xla'"):
        dot_product_attention(q, q, q, bias=jnp.zeros((1, 2, 4, 4)), implementation=impl)


@pytest.mark.parametrize("impl", ["cudnn", "splash"])
def test_accelerator_implementations_refuse_cpu(impl: str) -> None:
    q = jnp.zeros((1, 128, 2, 8), jnp.bfloat16)
    with pytest.raises(ValueError, match=f"implementation='{impl}' is unavailable.*backend"):
        dot_product_attention(q, q, q, implementation=impl)


@pytest.mark.parametrize(
    ("q_shape", "k_shape", "v_shape", "match"),
    [
        ((1, 4, 2, 8), (1, 4, 2), (1, 4, 2), "rank 4"),
        ((1, 4, 2, 8), (1, 4, 2, 8), (1, 5, 2, 8), r"key and value shapes differ"),
        ((1, 4, 2, 8), (2, 4, 2, 8), (2, 4, 2, 8), r"batch .* head size"),
        ((1, 4, 2, 8), (1, 4, 2, 4), (1, 4, 2, 4), r"batch .* head size"),
        (
            (1, 4, 3, 8),
            (1, 4, 2, 8),
            (1, 4, 2, 8),
            r"key heads \(2\) must divide query heads \(3\)",
        ),
    ],
)
def test_shape_errors(q_shape, k_shape, v_shape, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        dot_product_attention(
            jnp.zeros(q_shape), jnp.zeros(k_shape), jnp.zeros(v_shape), implementation="xla"
        )


def test_id_and_bias_shape_errors() -> None:
    q = jnp.zeros((2, 4, 2, 8))
    k = jnp.zeros((2, 6, 2, 8))
    with pytest.raises(ValueError, match=r"kv_segment_ids must have shape \(2, 6\)"):
        dot_product_attention(q, k, k, kv_segment_ids=jnp.ones((2, 4), jnp.int32))
    with pytest.raises(ValueError, match=r"q_positions must have shape \(2, 4\)"):
        dot_product_attention(q, k, k, q_positions=jnp.ones((4,), jnp.int32), causal=True)
    with pytest.raises(ValueError, match="not broadcastable"):
        dot_product_attention(q, k, k, bias=jnp.zeros((2, 2, 4, 5)), implementation="xla")
    with pytest.raises(ValueError, match="query_chunk_size must be a positive int"):
        dot_product_attention(q, k, k, implementation="chunked", query_chunk_size=0)


def test_auto_logs_its_choice_once_per_kind_of_call(monkeypatch, caplog) -> None:
    # Shapes no other test uses: the jitted function's trace cache would hide the call.
    monkeypatch.setattr(attention, "_LOGGED_CHOICES", set())
    q = jnp.zeros((1, 10, 2, 8))
    long_q = jnp.zeros((1, 1040, 2, 8))
    pos = jnp.arange(10, dtype=jnp.int32)[None]
    with caplog.at_level("INFO", logger="transformer_jax.ops.attention"):
        dot_product_attention(q, q, q)
        # Traced again (positions given), the same kind of call: not logged again.
        dot_product_attention(q, q, q, q_positions=pos, kv_positions=pos)
        dot_product_attention(q, q, q, causal=True)
        dot_product_attention(long_q, long_q, long_q, causal=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "transformer_jax.ops.attention"]
    assert len(lines) == 3, lines
    assert lines[0].startswith("attention auto: xla for bidirectional float32, 10 queries x 10")
    assert lines[1].startswith("attention auto: xla for causal float32, 10 queries x 10")
    assert lines[2].startswith("attention auto: chunked for causal float32, 1040 queries")
    assert "skips the blocks above the diagonal" in lines[2]


def test_training_cli_prints_the_choices(monkeypatch, capsys) -> None:
    import logging

    from transformer_jax.__main__ import show_attention_choices

    logger = logging.getLogger("transformer_jax.ops.attention")
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "propagate", True)
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    monkeypatch.setattr(attention, "_LOGGED_CHOICES", set())
    show_attention_choices()
    show_attention_choices()  # a second call adds no second handler
    q = jnp.zeros((1, 6, 2, 8))  # a shape no other test uses
    dot_product_attention(q, q, q)
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "attention auto: xla for bidirectional float32, 6 queries x 6 keys on cpu "
        "(few scores, and cpu has no fused kernel)"
    ]
