"""Scaled dot-product attention with segment-id and position-based masking.

Layouts follow ``jax.nn.dot_product_attention``: query ``[B, T, N, H]``, key and
value ``[B, S, K, H]`` where ``K`` divides ``N`` (grouped-query attention).

Key ``s`` is visible to query ``t`` when ``q_segment_ids[b, t] != 0``,
``kv_segment_ids[b, s] == q_segment_ids[b, t]`` and, for causal attention,
``kv_positions[b, s] <= q_positions[b, t]``. Query rows with no visible key
produce zeros. Softmax statistics are always accumulated in float32.

Prefix-LM (PaliGemma style): with ``causal`` set, bool ``q_prefix [B, T]`` and
``kv_prefix [B, S]`` mark each segment's bidirectional prefix. The causal rule
becomes ``kv_positions[b, s] <= q_positions[b, t] or (q_prefix[b, t] and
kv_prefix[b, s])``, still within one segment: prefix tokens see their whole
prefix and nothing after it, later tokens see everything up to themselves.
Packed rows give every segment its own prefix; the prefix tokens must be the
leading tokens of their segment (``prefix_from_lengths`` builds such masks).
An all-False prefix is plain causal attention.
"""

from __future__ import annotations

import functools
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "IMPLEMENTATIONS",
    "attention_with_weights",
    "dot_product_attention",
    "make_attention_mask",
    "prefix_from_lengths",
]

IMPLEMENTATIONS = ("auto", "xla", "chunked", "cudnn", "splash")

# Finite stand-in for -inf: masked logits stay finite so no NaN can appear.
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
# "auto" switches from the materialised reference to the chunked kernel above this (when
# neither cuDNN nor splash applies).
_AUTO_CHUNKED_MIN_SCORES = 2048 * 2048
# On a CPU a causal mask lets the chunked kernel skip the blocks above the diagonal, which
# makes it faster than the reference from 1,024 x 1,024 scores on (benchmarks/attention_bench).
_AUTO_CHUNKED_MIN_SCORES_CPU_CAUSAL = 1024 * 1024
_SPLASH_LANES = 128

_log = logging.getLogger(__name__)
_LOGGED_CHOICES: set[tuple] = set()


# --------------------------------------------------------------------------- masks


def _visible(
    q_seg: jax.Array,
    kv_seg: jax.Array,
    q_pos: jax.Array | None,
    kv_pos: jax.Array | None,
    causal: bool,
    q_prefix: jax.Array | None = None,
    kv_prefix: jax.Array | None = None,
) -> jax.Array:
    """Boolean visibility ``[B, T, S]`` from ids ``[B, T]`` / ``[B, S]``."""
    q_seg_BT1 = q_seg[:, :, None]
    visible_BTS = (q_seg_BT1 == kv_seg[:, None, :]) & (q_seg_BT1 != 0)
    if causal:
        assert q_pos is not None and kv_pos is not None
        ordered_BTS = kv_pos[:, None, :] <= q_pos[:, :, None]
        if q_prefix is not None:
            assert kv_prefix is not None
            ordered_BTS = ordered_BTS | (q_prefix[:, :, None] & kv_prefix[:, None, :])
        visible_BTS = visible_BTS & ordered_BTS
    return visible_BTS


def make_attention_mask(
    q_segment_ids: jax.Array,
    kv_segment_ids: jax.Array,
    q_positions: jax.Array | None = None,
    kv_positions: jax.Array | None = None,
    causal: bool = False,
    q_prefix: jax.Array | None = None,
    kv_prefix: jax.Array | None = None,
) -> jax.Array:
    """Returns the boolean attention mask ``[B, 1, T, S]`` (True = attend).

    Positions default to ``arange`` and are only read when ``causal`` is set;
    ``q_prefix``/``kv_prefix`` (both or neither, causal only) add the prefix-LM rule.
    """
    q_seg = jnp.asarray(q_segment_ids)
    kv_seg = jnp.asarray(kv_segment_ids)
    if q_seg.ndim != 2 or kv_seg.ndim != 2 or q_seg.shape[0] != kv_seg.shape[0]:
        raise ValueError(
            f"segment ids must be [B, T] and [B, S]; got {q_seg.shape} and {kv_seg.shape}"
        )
    if causal:
        q_positions = _ids_or_default(q_positions, q_seg.shape, "q_positions", arange=True)
        kv_positions = _ids_or_default(kv_positions, kv_seg.shape, "kv_positions", arange=True)
    q_prefix, kv_prefix = _prefix_or_none(q_prefix, kv_prefix, q_seg.shape, kv_seg.shape, causal)
    return _visible(q_seg, kv_seg, q_positions, kv_positions, causal, q_prefix, kv_prefix)[:, None]


def prefix_from_lengths(
    prefix_lengths: jax.typing.ArrayLike, positions: jax.typing.ArrayLike
) -> jax.Array:
    """Bool ``[B, L]`` prefix mask: ``positions < prefix_lengths``.

    ``prefix_lengths`` is ``[B]`` (one prefix per row) or ``[B, L]`` (per token:
    the prefix length of the token's segment, for packed rows); ``positions`` are
    the positions within each segment, ``[B, L]``.
    """
    lengths = jnp.asarray(prefix_lengths)
    pos_BL = jnp.asarray(positions)
    if pos_BL.ndim != 2:
        raise ValueError(f"positions must be [B, L], got shape {pos_BL.shape}")
    if lengths.ndim == 1:
        lengths = lengths[:, None]
    B, L = pos_BL.shape
    if lengths.ndim != 2 or lengths.shape[0] != B or lengths.shape[1] not in (1, L):
        raise ValueError(
            f"prefix_lengths must be [B] or [B, L] for positions {pos_BL.shape}, "
            f"got shape {jnp.shape(prefix_lengths)}"
        )
    return pos_BL < lengths


def _prefix_or_none(
    q_prefix: jax.typing.ArrayLike | None,
    kv_prefix: jax.typing.ArrayLike | None,
    q_shape: tuple[int, int],
    kv_shape: tuple[int, int],
    causal: bool,
) -> tuple[jax.Array | None, jax.Array | None]:
    """Validates the prefix masks (bool or int, nonzero = prefix) and returns them as bool."""
    if q_prefix is None and kv_prefix is None:
        return None, None
    if q_prefix is None or kv_prefix is None:
        raise ValueError("q_prefix and kv_prefix must be given together")
    if not causal:
        raise ValueError("q_prefix/kv_prefix need causal=True (without it every key is visible)")
    out = []
    for name, mask, shape in (("q_prefix", q_prefix, q_shape), ("kv_prefix", kv_prefix, kv_shape)):
        mask = jnp.asarray(mask)
        if mask.shape != tuple(shape):
            raise ValueError(f"{name} must have shape {tuple(shape)}, got {mask.shape}")
        if mask.dtype != jnp.bool_ and not jnp.issubdtype(mask.dtype, jnp.integer):
            raise ValueError(f"{name} must be a bool or integer array, got dtype {mask.dtype}")
        out.append(mask.astype(jnp.bool_))
    return out[0], out[1]


def _ids_or_default(
    ids: jax.typing.ArrayLike | None, shape: tuple[int, int], name: str, *, arange: bool
) -> jax.Array:
    """Validates an int id array of ``shape`` or builds the default (ones or arange)."""
    if ids is None:
        if arange:
            return jnp.broadcast_to(jnp.arange(shape[1], dtype=jnp.int32)[None], shape)
        return jnp.ones(shape, jnp.int32)
    ids = jnp.asarray(ids)
    if ids.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {ids.shape}")
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"{name} must be an integer array, got dtype {ids.dtype}")
    return ids.astype(jnp.int32)


# ------------------------------------------------------------------------ dispatch


@functools.partial(
    jax.jit,
    static_argnames=("causal", "implementation", "query_chunk_size", "key_chunk_size"),
)
def dot_product_attention(
    query: jax.typing.ArrayLike,
    key: jax.typing.ArrayLike,
    value: jax.typing.ArrayLike,
    *,
    q_segment_ids: jax.typing.ArrayLike | None = None,
    kv_segment_ids: jax.typing.ArrayLike | None = None,
    q_positions: jax.typing.ArrayLike | None = None,
    kv_positions: jax.typing.ArrayLike | None = None,
    causal: bool = False,
    q_prefix: jax.typing.ArrayLike | None = None,
    kv_prefix: jax.typing.ArrayLike | None = None,
    bias: jax.typing.ArrayLike | None = None,
    implementation: str = "auto",
    query_chunk_size: int = 512,
    key_chunk_size: int = 512,
) -> jax.Array:
    """Masked multi-head attention ``softmax(Q K^T / sqrt(H) + mask) V``.

    Args:
      query: ``[B, T, N, H]``.
      key: ``[B, S, K, H]`` with ``N % K == 0``.
      value: ``[B, S, K, H]``.
      q_segment_ids: ``[B, T]`` int, 0 marks padding; defaults to all ones.
      kv_segment_ids: ``[B, S]`` int, 0 marks padding; defaults to all ones.
      q_positions: ``[B, T]`` int positions for the causal rule; defaults to arange.
      kv_positions: ``[B, S]`` int positions for the causal rule; defaults to arange.
      causal: mask keys whose position is greater than the query's position.
      q_prefix: ``[B, T]`` bool, queries in their segment's bidirectional prefix
        (prefix-LM, see the module docstring); needs ``causal`` and ``kv_prefix``.
      kv_prefix: ``[B, S]`` bool, keys in their segment's bidirectional prefix.
      bias: additive float bias broadcastable to ``[B, N, T, S]`` ("xla" only).
      implementation: one of ``IMPLEMENTATIONS``.
      query_chunk_size: query block size for "chunked" (and "splash" when valid).
      key_chunk_size: key block size for "chunked" (and "splash" when valid).

    Returns:
      ``[B, T, N, H]`` in the dtype of ``query``.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"Unknown attention implementation {implementation!r}; expected one of {IMPLEMENTATIONS}"
        )
    for name, size in (("query_chunk_size", query_chunk_size), ("key_chunk_size", key_chunk_size)):
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"{name} must be a positive int, got {size!r}")
    q, k, v = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
    _check_qkv(q, k, v)
    B, T, _, _ = q.shape
    S = k.shape[1]
    default_positions = q_positions is None and kv_positions is None
    q_seg = _ids_or_default(q_segment_ids, (B, T), "q_segment_ids", arange=False)
    kv_seg = _ids_or_default(kv_segment_ids, (B, S), "kv_segment_ids", arange=False)
    q_pos = _ids_or_default(q_positions, (B, T), "q_positions", arange=True)
    kv_pos = _ids_or_default(kv_positions, (B, S), "kv_positions", arange=True)
    q_pre, kv_pre = _prefix_or_none(q_prefix, kv_prefix, (B, T), (B, S), causal)

    if implementation == "auto":
        implementation = _select_implementation(
            q,
            k,
            v,
            has_bias=bias is not None,
            positions_matter=causal and not default_positions,
            causal=causal,
        )
    if bias is not None and implementation != "xla":
        raise ValueError(
            f"bias is only supported by implementation='xla', got implementation={implementation!r}"
        )

    if implementation == "xla":
        mask = _visible(q_seg, kv_seg, q_pos, kv_pos, causal, q_pre, kv_pre)[:, None]
        return _xla_attention(q, k, v, mask, bias)
    if implementation == "chunked":
        return _chunked_attention(
            q,
            k,
            v,
            q_seg,
            kv_seg,
            q_pos,
            kv_pos,
            causal,
            query_chunk_size,
            key_chunk_size,
            q_prefix=q_pre,
            kv_prefix=kv_pre,
        )
    if implementation == "cudnn":
        reason = _cudnn_unsupported_reason(q, k, v)
        if reason is not None:
            raise ValueError(f"implementation='cudnn' is unavailable: {reason}")
        # cuDNN takes the dense mask (as a bias), so prefix-LM masks need nothing extra.
        mask = _visible(q_seg, kv_seg, q_pos, kv_pos, causal, q_pre, kv_pre)[:, None]
        return _cudnn_attention(q, k, v, mask, causal)
    reason = _splash_unsupported_reason(q, k, positions_matter=causal and not default_positions)
    if reason is not None:
        raise ValueError(f"implementation='splash' is unavailable: {reason}")
    return _splash_attention(
        q,
        k,
        v,
        q_seg,
        kv_seg,
        causal,
        query_chunk_size,
        key_chunk_size,
        q_prefix=q_pre,
        kv_prefix=kv_pre,
    )


def _check_qkv(q: jax.Array, k: jax.Array, v: jax.Array) -> None:
    """Raises ValueError unless q is [B, T, N, H] and k, v are [B, S, K, H] with K | N."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            "query, key and value must be rank 4 ([B, T, N, H], [B, S, K, H], [B, S, K, H]); "
            f"got shapes {q.shape}, {k.shape}, {v.shape}"
        )
    if k.shape != v.shape:
        raise ValueError(f"key and value shapes differ: {k.shape} vs {v.shape}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"query {q.shape} and key {k.shape} must agree on batch (dim 0) and head size (dim 3)"
        )
    if k.shape[2] == 0 or q.shape[2] % k.shape[2]:
        raise ValueError(
            f"key heads ({k.shape[2]}) must divide query heads ({q.shape[2]}); "
            f"query {q.shape}, key {k.shape}"
        )


def _select_implementation(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    has_bias: bool,
    positions_matter: bool,
    causal: bool = False,
) -> str:
    """Picks the fastest implementation valid for these inputs on the default backend and
    logs the choice (INFO, once per backend, dtype, lengths, mask kind and choice)."""
    choice, why = _choose(q, k, v, has_bias, positions_matter, causal)
    key = (jax.default_backend(), choice, q.dtype.name, q.shape[1], k.shape[1], causal)
    if key not in _LOGGED_CHOICES:
        _LOGGED_CHOICES.add(key)
        _log.info(
            "attention auto: %s for %s %s, %d queries x %d keys on %s (%s)",
            choice,
            "causal" if causal else "bidirectional",
            q.dtype.name,
            q.shape[1],
            k.shape[1],
            jax.default_backend(),
            why,
        )
    return choice


def _choose(q, k, v, has_bias: bool, positions_matter: bool, causal: bool) -> tuple[str, str]:
    """(implementation, why)."""
    if has_bias:
        return "xla", "an additive bias is given, which only xla takes"
    cudnn_reason = _cudnn_unsupported_reason(q, k, v, strict=True)
    if cudnn_reason is None:
        return "cudnn", "cuDNN fused attention applies"
    splash_reason = _splash_unsupported_reason(q, k, positions_matter=positions_matter)
    if splash_reason is None:
        return "splash", "splash attention applies"
    scores = q.shape[1] * k.shape[1]
    if scores > _AUTO_CHUNKED_MIN_SCORES:
        return "chunked", f"more than {_AUTO_CHUNKED_MIN_SCORES:,} scores per head"
    backend = jax.default_backend()
    if causal and backend == "cpu" and scores >= _AUTO_CHUNKED_MIN_SCORES_CPU_CAUSAL:
        return "chunked", "causal on a CPU: it skips the blocks above the diagonal"
    blocker = {"gpu": f"; not cuDNN: {cudnn_reason}", "tpu": f"; not splash: {splash_reason}"}
    return "xla", "few scores" + blocker.get(backend, f", and {backend} has no fused kernel")


# ----------------------------------------------------------------------------- xla


def _xla_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    bias: jax.typing.ArrayLike | None,
    with_weights: bool = False,
):
    """Reference attention materialising ``[B, N, T, S]`` scores; mask is ``[B, 1, T, S]``.

    With ``with_weights``: (output, probabilities ``[B, N, T, S]``).
    """
    B, T, N, H = q.shape
    S, K = k.shape[1], k.shape[2]
    G = N // K
    q_BTKGH = q.reshape(B, T, K, G, H)
    s_BKGTS = jnp.einsum("btkgh,bskh->bkgts", q_BTKGH, k, preferred_element_type=jnp.float32)
    s_BKGTS = s_BKGTS * (1.0 / math.sqrt(H))
    if bias is not None:
        bias = jnp.asarray(bias)
        try:
            if bias.ndim > 4:
                raise ValueError
            np.broadcast_shapes(bias.shape, (B, N, T, S))
        except ValueError:
            raise ValueError(
                f"bias shape {bias.shape} is not broadcastable to [B, N, T, S] = {(B, N, T, S)}"
            ) from None
        bias_BNTS = jnp.broadcast_to(bias.astype(jnp.float32), (B, N, T, S))
        s_BKGTS = s_BKGTS + bias_BNTS.reshape(B, K, G, T, S)
    mask_B11TS = mask[:, :, None]
    s_BKGTS = jnp.where(mask_B11TS, s_BKGTS, _MASK_VALUE)
    p_BKGTS = jnp.where(mask_B11TS, jax.nn.softmax(s_BKGTS, axis=-1), 0.0)
    out_BTKGH = jnp.einsum(
        "bkgts,bskh->btkgh", p_BKGTS.astype(v.dtype), v, preferred_element_type=jnp.float32
    )
    out_BTNH = out_BTKGH.reshape(B, T, N, H).astype(q.dtype)
    if with_weights:
        return out_BTNH, p_BKGTS.reshape(B, N, T, S)
    return out_BTNH


def attention_with_weights(
    query: jax.typing.ArrayLike,
    key: jax.typing.ArrayLike,
    value: jax.typing.ArrayLike,
    *,
    q_segment_ids: jax.typing.ArrayLike | None = None,
    kv_segment_ids: jax.typing.ArrayLike | None = None,
    q_positions: jax.typing.ArrayLike | None = None,
    kv_positions: jax.typing.ArrayLike | None = None,
    causal: bool = False,
    q_prefix: jax.typing.ArrayLike | None = None,
    kv_prefix: jax.typing.ArrayLike | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The "xla" reference attention (same arguments as `dot_product_attention`), also
    returning its probabilities ``[B, N, T, S]`` (float32; masked keys 0, rows sum to 1).

    For inspecting a model (attention maps); the memory-efficient kernels never
    materialise these weights.
    """
    q, k, v = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
    _check_qkv(q, k, v)
    B, T, _, _ = q.shape
    S = k.shape[1]
    q_seg = _ids_or_default(q_segment_ids, (B, T), "q_segment_ids", arange=False)
    kv_seg = _ids_or_default(kv_segment_ids, (B, S), "kv_segment_ids", arange=False)
    q_pos = _ids_or_default(q_positions, (B, T), "q_positions", arange=True)
    kv_pos = _ids_or_default(kv_positions, (B, S), "kv_positions", arange=True)
    q_pre, kv_pre = _prefix_or_none(q_prefix, kv_prefix, (B, T), (B, S), causal)
    mask = _visible(q_seg, kv_seg, q_pos, kv_pos, causal, q_pre, kv_pre)[:, None]
    return _xla_attention(q, k, v, mask, None, with_weights=True)


# ------------------------------------------------------------------------- chunked


def _chunked_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_seg: jax.Array,
    kv_seg: jax.Array,
    q_pos: jax.Array,
    kv_pos: jax.Array,
    causal: bool,
    query_chunk_size: int,
    key_chunk_size: int,
    *,
    q_prefix: jax.Array | None = None,
    kv_prefix: jax.Array | None = None,
) -> jax.Array:
    """Online-softmax attention over query and key blocks; never builds ``[T, S]`` scores
    and skips the block pairs in which no query sees a key."""
    B, T, N, H = q.shape
    S, K = k.shape[1], k.shape[2]
    G = N // K
    qc, kc = min(query_chunk_size, T), min(key_chunk_size, S)
    t_pad, s_pad = -T % qc, -S % kc

    q_BKGTH = q.reshape(B, T, K, G, H).transpose(0, 2, 3, 1, 4)
    k_BKSH = k.transpose(0, 2, 1, 3)
    v_BKSH = v.transpose(0, 2, 1, 3)
    q_BKGTH = jnp.pad(q_BKGTH, ((0, 0), (0, 0), (0, 0), (0, t_pad), (0, 0)))
    k_BKSH = jnp.pad(k_BKSH, ((0, 0), (0, 0), (0, s_pad), (0, 0)))
    v_BKSH = jnp.pad(v_BKSH, ((0, 0), (0, 0), (0, s_pad), (0, 0)))
    # Padded rows and columns get segment id 0, which is never visible.
    q_seg = jnp.pad(q_seg, ((0, 0), (0, t_pad)))
    kv_seg = jnp.pad(kv_seg, ((0, 0), (0, s_pad)))
    q_pos = jnp.pad(q_pos, ((0, 0), (0, t_pad)))
    kv_pos = jnp.pad(kv_pos, ((0, 0), (0, s_pad)))
    if q_prefix is not None:
        q_prefix = jnp.pad(q_prefix, ((0, 0), (0, t_pad)))
        kv_prefix = jnp.pad(kv_prefix, ((0, 0), (0, s_pad)))

    out_BKGTH = _flash(
        q_BKGTH, k_BKSH, v_BKSH, q_seg, kv_seg, q_pos, kv_pos, q_prefix, kv_prefix, causal, qc, kc
    )
    return out_BKGTH[:, :, :, :T].transpose(0, 3, 1, 2, 4).reshape(B, T, N, H)


def _split(x: jax.Array | None, axis: int, size: int) -> jax.Array | None:
    """Splits ``axis`` into blocks of ``size`` and moves the block index to the front.

    ``None`` (an absent prefix mask) stays ``None``: scan and map carry it as an
    empty pytree.
    """
    if x is None:
        return None
    x = x.reshape(x.shape[:axis] + (x.shape[axis] // size, size) + x.shape[axis + 1 :])
    return jnp.moveaxis(x, axis, 0)


def _merge(x: jax.Array, axis: int) -> jax.Array:
    """Inverse of ``_split``."""
    x = jnp.moveaxis(x, 0, axis)
    return x.reshape(x.shape[:axis] + (-1,) + x.shape[axis + 2 :])


def _flash_forward(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_seg: jax.Array,
    kv_seg: jax.Array,
    q_pos: jax.Array,
    kv_pos: jax.Array,
    q_pre: jax.Array | None,
    kv_pre: jax.Array | None,
    causal: bool,
    qc: int,
    kc: int,
) -> tuple[jax.Array, jax.Array]:
    """Returns out ``[B, K, G, T, H]`` and float32 logsumexp ``[B, K, G, T]``."""
    B, K, G, _, H = q.shape
    scale = 1.0 / math.sqrt(H)
    q_blocks = (_split(q, 3, qc), _split(q_seg, 1, qc), _split(q_pos, 1, qc), _split(q_pre, 1, qc))
    kv_blocks = (
        _split(k, 2, kc),
        _split(v, 2, kc),
        _split(kv_seg, 1, kc),
        _split(kv_pos, 1, kc),
        _split(kv_pre, 1, kc),
    )

    def query_block(
        args: tuple[jax.Array | None, ...],
    ) -> tuple[jax.Array, jax.Array]:
        q_c, q_seg_c, q_pos_c, q_pre_c = args

        def key_block(
            carry: tuple[jax.Array, jax.Array, jax.Array],
            kv_args: tuple[jax.Array | None, ...],
        ) -> tuple[tuple[jax.Array, jax.Array, jax.Array], None]:
            k_c, v_c, kv_seg_c, kv_pos_c, kv_pre_c = kv_args
            visible_BTS = _visible(q_seg_c, kv_seg_c, q_pos_c, kv_pos_c, causal, q_pre_c, kv_pre_c)

            def update(carry):
                m_BKGT, l_BKGT, acc_BKGTH = carry
                mask_B11TS = visible_BTS[:, None, None]
                s_BKGTS = jnp.einsum(
                    "bkgth,bksh->bkgts", q_c, k_c, preferred_element_type=jnp.float32
                )
                s_BKGTS = jnp.where(mask_B11TS, s_BKGTS * scale, _MASK_VALUE)
                m_new = jnp.maximum(m_BKGT, s_BKGTS.max(axis=-1))
                p_BKGTS = jnp.where(mask_B11TS, jnp.exp(s_BKGTS - m_new[..., None]), 0.0)
                alpha = jnp.exp(m_BKGT - m_new)
                l_BKGT = alpha * l_BKGT + p_BKGTS.sum(axis=-1)
                pv_BKGTH = jnp.einsum(
                    "bkgts,bksh->bkgth",
                    p_BKGTS.astype(v_c.dtype),
                    v_c,
                    preferred_element_type=jnp.float32,
                )
                return m_new, l_BKGT, alpha[..., None] * acc_BKGTH + pv_BKGTH

            # A block with no visible pair (above the causal diagonal, between other
            # segments, all padding) changes nothing: skip its work.
            return jax.lax.cond(visible_BTS.any(), update, lambda c: c, carry), None

        init = (
            jnp.full((B, K, G, qc), _MASK_VALUE, jnp.float32),
            jnp.zeros((B, K, G, qc), jnp.float32),
            jnp.zeros((B, K, G, qc, H), jnp.float32),
        )
        (m_BKGT, l_BKGT, acc_BKGTH), _ = jax.lax.scan(key_block, init, kv_blocks)
        seen = l_BKGT > 0.0
        l_safe = jnp.where(seen, l_BKGT, 1.0)
        out_BKGTH = (acc_BKGTH / l_safe[..., None]).astype(q.dtype)
        lse_BKGT = jnp.where(seen, m_BKGT + jnp.log(l_safe), 0.0)
        return out_BKGTH, lse_BKGT

    out_blocks, lse_blocks = jax.lax.map(query_block, q_blocks)
    return _merge(out_blocks, 3), _merge(lse_blocks, 3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(9, 10, 11))
def _flash(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_seg: jax.Array,
    kv_seg: jax.Array,
    q_pos: jax.Array,
    kv_pos: jax.Array,
    q_pre: jax.Array | None,
    kv_pre: jax.Array | None,
    causal: bool,
    qc: int,
    kc: int,
) -> jax.Array:
    """Blocked attention on q ``[B, K, G, T, H]``, k/v ``[B, K, S, H]`` (T % qc == S % kc == 0)."""
    return _flash_forward(q, k, v, q_seg, kv_seg, q_pos, kv_pos, q_pre, kv_pre, causal, qc, kc)[0]


def _flash_fwd(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_seg: jax.Array,
    kv_seg: jax.Array,
    q_pos: jax.Array,
    kv_pos: jax.Array,
    q_pre: jax.Array | None,
    kv_pre: jax.Array | None,
    causal: bool,
    qc: int,
    kc: int,
) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    out, lse = _flash_forward(q, k, v, q_seg, kv_seg, q_pos, kv_pos, q_pre, kv_pre, causal, qc, kc)
    return out, (q, k, v, q_seg, kv_seg, q_pos, kv_pos, q_pre, kv_pre, out, lse)


def _flash_bwd(
    causal: bool, qc: int, kc: int, res: tuple[jax.Array, ...], d_out: jax.Array
) -> tuple[jax.Array | None, ...]:
    """Recomputes probabilities block by block from the saved logsumexp."""
    q, k, v, q_seg, kv_seg, q_pos, kv_pos, q_pre, kv_pre, out, lse = res
    H = q.shape[-1]
    scale = 1.0 / math.sqrt(H)
    # delta_t = sum_h dO_th O_th = sum_s P_ts dP_ts, shared by every key block.
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
    q_blocks = (
        _split(q, 3, qc),
        _split(d_out, 3, qc),
        _split(lse, 3, qc),
        _split(delta, 3, qc),
        _split(q_seg, 1, qc),
        _split(q_pos, 1, qc),
        _split(q_pre, 1, qc),
    )
    kv_blocks = (
        _split(k, 2, kc),
        _split(v, 2, kc),
        _split(kv_seg, 1, kc),
        _split(kv_pos, 1, kc),
        _split(kv_pre, 1, kc),
    )

    def key_block(
        dq_blocks: jax.Array, kv_args: tuple[jax.Array | None, ...]
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        k_c, v_c, kv_seg_c, kv_pos_c, kv_pre_c = kv_args

        def query_block(
            carry: tuple[jax.Array, jax.Array], q_args: tuple[jax.Array | None, ...]
        ) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
            q_c, do_c, lse_c, delta_c, q_seg_c, q_pos_c, q_pre_c, dq_c = q_args
            visible_BTS = _visible(q_seg_c, kv_seg_c, q_pos_c, kv_pos_c, causal, q_pre_c, kv_pre_c)
            return jax.lax.cond(
                visible_BTS.any(),
                functools.partial(update, visible_BTS, q_c, do_c, lse_c, delta_c),
                lambda carry, dq_c: (carry, dq_c),  # no visible pair: nothing to add
                carry,
                dq_c,
            )

        def update(visible_BTS, q_c, do_c, lse_c, delta_c, carry, dq_c):
            dk_BKSH, dv_BKSH = carry
            mask_B11TS = visible_BTS[:, None, None]
            s_BKGTS = jnp.einsum("bkgth,bksh->bkgts", q_c, k_c, preferred_element_type=jnp.float32)
            p_BKGTS = jnp.where(mask_B11TS, jnp.exp(s_BKGTS * scale - lse_c[..., None]), 0.0)
            dv_BKSH = dv_BKSH + jnp.einsum(
                "bkgts,bkgth->bksh",
                p_BKGTS.astype(do_c.dtype),
                do_c,
                preferred_element_type=jnp.float32,
            )
            dp_BKGTS = jnp.einsum(
                "bkgth,bksh->bkgts", do_c, v_c, preferred_element_type=jnp.float32
            )
            ds_BKGTS = p_BKGTS * (dp_BKGTS - delta_c[..., None]) * scale
            dq_c = dq_c + jnp.einsum(
                "bkgts,bksh->bkgth",
                ds_BKGTS.astype(k_c.dtype),
                k_c,
                preferred_element_type=jnp.float32,
            )
            dk_BKSH = dk_BKSH + jnp.einsum(
                "bkgts,bkgth->bksh",
                ds_BKGTS.astype(q_c.dtype),
                q_c,
                preferred_element_type=jnp.float32,
            )
            return (dk_BKSH, dv_BKSH), dq_c

        zeros_BKSH = jnp.zeros(k_c.shape, jnp.float32)
        (dk_BKSH, dv_BKSH), dq_blocks = jax.lax.scan(
            query_block, (zeros_BKSH, zeros_BKSH), (*q_blocks, dq_blocks)
        )
        return dq_blocks, (dk_BKSH, dv_BKSH)

    dq_init = jnp.zeros(q_blocks[0].shape, jnp.float32)
    dq_blocks, (dk_blocks, dv_blocks) = jax.lax.scan(key_block, dq_init, kv_blocks)
    dq = _merge(dq_blocks, 3).astype(q.dtype)
    dk = _merge(dk_blocks, 2).astype(k.dtype)
    dv = _merge(dv_blocks, 2).astype(v.dtype)
    return dq, dk, dv, None, None, None, None, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


# --------------------------------------------------------------------------- cudnn


def _cudnn_unsupported_reason(
    q: jax.Array, k: jax.Array, v: jax.Array, *, strict: bool = False
) -> str | None:
    """Why cuDNN fused attention cannot run these inputs, or None if it can.

    ``strict`` also requires even sequence lengths, which cuDNN needs for the
    backward pass when a mask (passed as bias) is present.
    """
    if jax.default_backend() != "gpu":
        return f"it needs a CUDA GPU backend, the default backend is {jax.default_backend()!r}"
    device = jax.devices()[0]
    if "cuda" not in getattr(device.client, "platform_version", "").lower():
        return "it needs an NVIDIA (CUDA) GPU"
    allowed = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if q.dtype not in allowed or not q.dtype == k.dtype == v.dtype:
        return f"q, k, v must all be bfloat16 or float16, got {q.dtype}, {k.dtype}, {v.dtype}"
    H = q.shape[-1]
    major = int(str(getattr(device, "compute_capability", "0")).split(".")[0])
    max_h = 256 if major >= 9 else 128
    if H % 8 or H > max_h:
        return f"head dim must be a multiple of 8 and <= {max_h}, got {H}"
    if strict and (q.shape[1] % 2 or k.shape[1] % 2):
        return f"sequence lengths must be even, got T={q.shape[1]}, S={k.shape[1]}"
    return None


def _keys_at_or_before_queries(mask: jax.Array) -> jax.Array:
    """Scalar bool: does every visible key of ``mask`` ``[B, 1, T, S]`` sit at or before
    its query by index (row i sees only columns j <= i)?"""
    T, S = mask.shape[-2:]
    above_TS = jnp.arange(S)[None, :] > jnp.arange(T)[:, None]
    return ~jnp.any(mask & above_TS[None, None])


def _cudnn_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, causal: bool = False
) -> jax.Array:
    """cuDNN fused attention with an explicit ``[B, 1, T, S]`` mask.

    With ``causal``, where the mask shows no key after its query by index (self-attention
    over packed documents whose positions increase, the training case), cuDNN is also
    told the mask is causal, so it skips the tiles above the diagonal; the dense mask
    still decides inside the others. The device picks between the two kernels per call.
    """

    def run(is_causal: bool) -> jax.Array:
        return jax.nn.dot_product_attention(
            q, k, v, mask=mask, is_causal=is_causal, implementation="cudnn"
        )

    if causal and q.shape[1] > 1:
        out = jax.lax.cond(_keys_at_or_before_queries(mask), lambda: run(True), lambda: run(False))
    else:
        out = run(False)
    # cuDNN spreads fully masked rows uniformly; the contract is zeros.
    row_seen_BT11 = jnp.any(mask, axis=-1).transpose(0, 2, 1)[..., None]
    return jnp.where(row_seen_BT11, out, 0).astype(q.dtype)


# -------------------------------------------------------------------------- splash


def _splash_unsupported_reason(q: jax.Array, k: jax.Array, *, positions_matter: bool) -> str | None:
    """Why TPU splash attention cannot run these inputs, or None if it can."""
    if jax.default_backend() != "tpu":
        return f"it needs a TPU backend, the default backend is {jax.default_backend()!r}"
    return _splash_shape_problem(q, k, positions_matter=positions_matter)


def _splash_shape_problem(q: jax.Array, k: jax.Array, *, positions_matter: bool) -> str | None:
    """Backend-independent splash constraints."""
    if positions_matter:
        return "only default positions (arange) are supported with causal masking"
    T, S = q.shape[1], k.shape[1]
    if T % _SPLASH_LANES or S % _SPLASH_LANES:
        return f"sequence lengths must be multiples of {_SPLASH_LANES}, got T={T}, S={S}"
    return None


def _splash_block(length: int, preferred: int) -> int:
    """Largest block in ``{preferred, 512, 256, 128}`` that tiles ``length``."""
    for block in (preferred, 512, 256, _SPLASH_LANES):
        if block % _SPLASH_LANES == 0 and block <= length and length % block == 0:
            return block
    raise ValueError(f"no splash block size tiles length {length}")


def _rows_with_visible_key(q_seg: jax.Array, kv_seg: jax.Array, causal: bool) -> jax.Array:
    """``[B, T]``: does query t see any key, assuming default positions.

    Uses a stable sort of the key ids so that memory stays ``O(T + S)``: the
    first occurrence of a query's id among the keys decides causal visibility.
    """
    S, T = kv_seg.shape[1], q_seg.shape[1]
    order_BS = jnp.argsort(kv_seg, axis=-1, stable=True)
    sorted_BS = jnp.take_along_axis(kv_seg, order_BS, axis=-1)
    first_BT = jax.vmap(functools.partial(jnp.searchsorted, side="left"))(sorted_BS, q_seg)
    first_BT = jnp.minimum(first_BT, S - 1)
    found_BT = (jnp.take_along_axis(sorted_BS, first_BT, axis=-1) == q_seg) & (q_seg != 0)
    if causal:
        first_index_BT = jnp.take_along_axis(order_BS, first_BT, axis=-1)
        found_BT = found_BT & (first_index_BT <= jnp.arange(T)[None, :])
    return found_BT


def _splash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_seg: jax.Array,
    kv_seg: jax.Array,
    causal: bool,
    query_chunk_size: int,
    key_chunk_size: int,
    *,
    q_prefix: jax.Array | None = None,
    kv_prefix: jax.Array | None = None,
    interpret: bool = False,
) -> jax.Array:
    """TPU Pallas splash attention with segment ids and an optional causal mask.

    Splash masks are static, so a per-row prefix-LM mask takes two kernel calls:
    causal attention for the rows after the prefix, and bidirectional attention
    among prefix tokens only (ids of non-prefix tokens set to 0) for the prefix
    rows. Exact when every prefix leads its segment.
    """
    try:
        from jax.experimental.pallas.ops.tpu import splash_attention as splash
    except ImportError as err:  # pragma: no cover - depends on the jax build
        raise ValueError(f"implementation='splash' is unavailable: {err}") from err
    B, T, N, H = q.shape
    S = k.shape[1]
    bq, bkv = _splash_block(T, query_chunk_size), _splash_block(S, key_chunk_size)

    def kernel(head_mask):
        return splash.make_splash_mha_single_device(
            splash.MultiHeadMask([head_mask] * N),
            block_sizes=splash.BlockSizes(
                block_q=bq,
                block_kv=bkv,
                block_kv_compute=bkv,
                block_q_dkv=bq,
                block_kv_dkv=bkv,
                block_kv_dkv_compute=bkv,
                block_q_dq=bq,
                block_kv_dq=bkv,
            ),
            interpret=interpret,
        )

    q_BNTH = (q * jnp.asarray(1.0 / math.sqrt(H), q.dtype)).transpose(0, 2, 1, 3)
    k_BKSH = k.transpose(0, 2, 1, 3)
    v_BKSH = v.transpose(0, 2, 1, 3)

    def run(kernel_fn, q_ids: jax.Array, kv_ids: jax.Array, is_causal: bool) -> jax.Array:
        # Splash treats id 0 like any other id and divides by zero on rows that
        # see nothing. Point such rows at key 0 (always visible under the default
        # positions), then zero their output so they carry no gradient either.
        seen_BT = _rows_with_visible_key(q_ids, kv_ids, is_causal)
        q_ids = jnp.where(seen_BT, q_ids, kv_ids[:, :1])
        segment_ids = splash.SegmentIds(q=q_ids, kv=kv_ids)
        out_BNTH = jax.vmap(kernel_fn)(q_BNTH, k_BKSH, v_BKSH, segment_ids)
        out_BTNH = out_BNTH.transpose(0, 2, 1, 3)
        return jnp.where(seen_BT[:, :, None, None], out_BTNH, 0).astype(q.dtype)

    head_mask = splash.CausalMask((T, S)) if causal else splash.FullMask((T, S))
    out_BTNH = run(kernel(head_mask), q_seg, kv_seg, causal)
    if q_prefix is None:
        return out_BTNH
    prefix_q_ids = jnp.where(q_prefix, q_seg, 0)
    prefix_kv_ids = jnp.where(kv_prefix, kv_seg, 0)
    prefix_out_BTNH = run(kernel(splash.FullMask((T, S))), prefix_q_ids, prefix_kv_ids, False)
    return jnp.where(q_prefix[:, :, None, None], prefix_out_BTNH, out_BTNH)
