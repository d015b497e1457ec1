"""Multi-head attention with a KV cache, over the one attention core."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from transformer_jax.nn.config import TransformerConfig
from transformer_jax.nn.positions import apply_rope
from transformer_jax.ops.attention import (
    _MASK_VALUE,
    _visible,
    attention_with_weights,
    dot_product_attention,
)


class Projection(nn.Module):
    """x [..., *in] -> [..., *out] with a kernel [*in, *out] named by logical axes."""

    in_features: tuple[int, ...]
    out_features: tuple[int, ...]
    axes: tuple[str, ...]
    config: TransformerConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        n_in, n_out = len(self.in_features), len(self.out_features)
        init = nn.initializers.variance_scaling(
            1.0,
            "fan_avg",
            "uniform",
            in_axis=tuple(range(n_in)),
            out_axis=tuple(range(n_in, n_in + n_out)),
        )
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(init, self.axes),
            self.in_features + self.out_features,
            cfg.param_dtype,
        )
        x, kernel = x.astype(cfg.dtype), jnp.asarray(kernel, cfg.dtype)
        if not cfg.decode and jax.default_backend() == "cpu":
            y = _project_grad_in_layout(x, kernel, n_in)
        else:
            y = _project(x, kernel, n_in)
        if cfg.attention_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros, self.axes[n_in:]),
                self.out_features,
                cfg.param_dtype,
            )
            # Explicit leading axes: the bias broadcasts over batch and length.
            lead = (1,) * (y.ndim - n_out)
            y = y + jnp.asarray(bias, cfg.dtype).reshape(lead + self.out_features)
        return y


def _project(x: jax.Array, kernel: jax.Array, n_in: int) -> jax.Array:
    """x [..., *in] times kernel [*in, *out] -> [..., *out]."""
    in_dims = tuple(range(x.ndim - n_in, x.ndim))
    return jax.lax.dot_general(x, kernel, ((in_dims, tuple(range(n_in))), ((), ())))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _project_grad_in_layout(x: jax.Array, kernel: jax.Array, n_in: int) -> jax.Array:
    """`_project`, with the kernel's gradient computed in the kernel's own layout (for
    XLA on a CPU; the value and the gradients are the plain product's).

    The kernel's gradient contracts the tokens of x [tokens, in] with those of the
    output's gradient d [tokens, out]. Attention hands d over in its heads-first layout,
    and left to itself XLA's CPU dot transposes d to [out, tokens], contracted last, and
    writes the gradient transposed, [out, in]. Adam's moment updates then read each such
    gradient across its rows, twice per step. Here x is transposed instead ([in, tokens],
    behind an optimization barrier so that XLA cannot fold it back) and the gradient
    comes out as [in, out]. On a 2-core Zen 4, the median train step at shape B of
    `benchmarks/run.py` went from 1.55-1.79 to 1.46-1.56 s (seven A/B rounds, faster in
    each), the kernels that transpose or copy from 358 to 230 ms of a profiled step; at
    shape S from 0.85-0.91 to 0.83-0.85 s (three rounds). Compiling takes as long.
    """
    return _project(x, kernel, n_in)


def _project_fwd(x, kernel, n_in):
    return _project(x, kernel, n_in), (x, kernel)


def _project_bwd(n_in, res, d):
    x, kernel = res
    n_out = kernel.ndim - n_in
    out_dims = tuple(range(d.ndim - n_out, d.ndim))
    dx = jax.lax.dot_general(d, kernel, ((out_dims, tuple(range(n_in, kernel.ndim))), ((), ())))
    x_IT = jax.lax.optimization_barrier(x.reshape(-1, math.prod(kernel.shape[:n_in])).T)
    d_kernel = x_IT @ d.reshape(x_IT.shape[1], -1)
    return dx, d_kernel.reshape(kernel.shape)


_project_grad_in_layout.defvjp(_project_fwd, _project_bwd)


def _proj(features: tuple[int, ...], axes, config: TransformerConfig, name: str, in_features=None):
    in_features = (config.d_model,) if in_features is None else in_features
    return Projection(in_features, features, axes, config, name=name)


FUSED_QKV = "fused_qkv"


def with_fused_qkv(params):
    """`params` with, beside each attention module's query, key and value projections, the
    three joined along the heads axis (kernel [..., D, N + 2K, H], and bias where there is
    one) under `FUSED_QKV`: decode-mode self-attention then projects a step's tokens with
    one matmul instead of three. Training never reads it.

    For decoding loops, made before the loop (outside the loop's program: XLA repeats a
    join made inside the loop every step). A step multiplies a few rows by each kernel,
    and on a CPU one matmul over the joined kernel takes about two thirds of the time of
    the three. Cross-attention modules get a joined kernel too, which decoding does not
    read (their keys and values are cached). Where the kernels are split over devices by
    heads (`heads_split`), nothing is joined: the params come back as they are.
    """
    if heads_split(params):
        return params

    def visit(node):
        if not isinstance(node, Mapping):
            return node
        node = {name: visit(child) for name, child in node.items()}
        parts = [node.get(name) for name in ("query", "key", "value")]
        if all(isinstance(p, Mapping) and "kernel" in p for p in parts):
            node[FUSED_QKV] = {
                field: jnp.concatenate([p[field] for p in parts], axis=-2)
                for field in parts[0]
                if all(field in p for p in parts)
            }
        return node

    return visit(params)


def heads_split(params) -> bool:
    """Whether any query, key or value kernel among `params` (placed arrays) is split over
    devices along its heads axis. Their joined kernel (`with_fused_qkv`) would then need
    its heads re-sharded, and the three slices of every step's projection moved between
    devices: decoding keeps the three projections apart."""
    for path, x in jax.tree_util.tree_leaves_with_path(params):
        names = [getattr(k, "key", None) for k in path[-2:]]
        if names[-1] != "kernel" or names[0] not in ("query", "key", "value"):
            continue
        spec = getattr(getattr(x, "sharding", None), "spec", None)
        if spec is not None and len(spec) >= x.ndim - 1 and spec[x.ndim - 2] is not None:
            return True
    return False


CROSS_CACHE_NAMES = frozenset({"cross_key", "cross_value", "cross_segment_ids"})


def is_cross_cache(path) -> bool:
    """Whether a cache leaf's key path (as `jax.tree_util` gives it) names cross-attention
    keys, values or segment ids: written once from the encoder memory, then only read, so
    equal across the beams of an example."""
    return any(getattr(k, "key", None) in CROSS_CACHE_NAMES for k in path)


# The self-attention cache in beam search: bool[B * R, S, R], where row j (beam j % R of
# its example) is True at [j, s, r] when beam j's token in slot s sits in row r of the
# example. Steps append keys and values to their own row only; the beam search gathers
# this table instead of the keys and values (`add_beam_rows`).
BEAM_ROWS = "beam_rows"
SELF_CACHE_NAMES = frozenset({"cached_key", "cached_value"})


def is_beam_read_cache(path) -> bool:
    """Whether beam search leaves a cache leaf where it is once `add_beam_rows` has run:
    cross-attention leaves (the same in every beam) and self-attention keys and values
    (read through the `BEAM_ROWS` table)."""
    names = {getattr(k, "key", None) for k in path}
    return bool(names & CROSS_CACHE_NAMES) or bool(names & SELF_CACHE_NAMES)


def add_beam_rows(cache, beam_size: int):
    """The cache of ``B * beam_size`` rows made ready for beam-search steps that never
    reorder keys and values: each self-attention's values are laid out [B, K, S * R, H]
    and its keys [B, K, H, S * R] (slot s of row r at s * R + r: the R beams of an example
    side by side, so one matmul per example and head reads them all, each in the layout
    its matmul reads fastest, and a step's R new entries are adjacent, written in place
    by one update), and a `BEAM_ROWS` table sits next to
    them, every beam reading its own row (the state right after the prompt, the same in
    every beam). From then on each step appends its keys and values to its own row and
    attends through the table, so beam search reorders the table, [B * R, S, R] booleans,
    instead of copying every layer's keys and values."""

    def visit(node):
        if not isinstance(node, Mapping):
            return node
        out = {name: visit(child) for name, child in node.items()}
        if "cached_key" in node:
            BR, K, S, H = node["cached_key"].shape
            B, R = BR // beam_size, beam_size
            key = node["cached_key"].reshape(B, R, K, S, H).transpose(0, 2, 4, 3, 1)
            out["cached_key"] = key.reshape(B, K, H, S * R)
            value = node["cached_value"].reshape(B, R, K, S, H).transpose(0, 2, 3, 1, 4)
            out["cached_value"] = value.reshape(B, K, S * R, H)
            out[BEAM_ROWS] = jnp.broadcast_to(_own_rows(BR, R), (BR, S, R))
        return out

    return visit(cache)


def _write_slots(cache: jax.Array, new: jax.Array, index: jax.Array, axis: int) -> jax.Array:
    """Writes ``new`` into ``cache`` from slot ``index`` on (along ``axis``), in every row.

    One dynamic-update-slice at a scalar index, so inside a decoding loop XLA updates the
    cache buffer in place (a per-row index would rewrite the whole cache every step).
    """
    return jax.lax.dynamic_update_slice_in_dim(cache, new.astype(cache.dtype), index, axis=axis)


def _heads_first(x):
    """[B, S, K, H] <-> [B, K, S, H] (the swap is its own inverse)."""
    return x.transpose(0, 2, 1, 3)


def _attend_slots(q_BTNH, k_BKSH, v_BKSH, visible_BTS) -> jax.Array:
    """Masked attention over a cache laid out [B, K, S, H].

    The arithmetic of the "xla" attention core (float32 scores and softmax), reading keys
    and values in the layout the matmuls want, so a decoding step never copies the cache.
    The G = N / K query heads that share a key head and the T queries go into one matmul
    operand [B, K, G * T, H] (rows of a plain batched matmul): with T and G kept apart,
    XLA's CPU dot multiplied keys [S, H] by queries [H, G] instead, and on a 2-core Zen 4
    a decoding step's attention over 256 cached slots at batch 8 with 12 query heads on 4
    key heads took 12-13 ms for 12 layers against 4.2-4.7 ms this way (one key head per
    query head: the same either way; a 128-token prefill over 1,024 slots: 2x faster).
    """
    B, T, N, H = q_BTNH.shape
    K = k_BKSH.shape[1]
    G = N // K
    q_BKMH = q_BTNH.reshape(B, T, K, G, H).transpose(0, 2, 3, 1, 4).reshape(B, K, G * T, H)
    s_BKMS = jnp.einsum("bkmh,bksh->bkms", q_BKMH, k_BKSH, preferred_element_type=jnp.float32)
    s_BKGTS = (s_BKMS * (1.0 / math.sqrt(H))).reshape(B, K, G, T, -1)
    mask_B11TS = visible_BTS[:, None, None]
    s_BKGTS = jnp.where(mask_B11TS, s_BKGTS, _MASK_VALUE)
    p_BKGTS = jnp.where(mask_B11TS, jax.nn.softmax(s_BKGTS, axis=-1), 0.0)
    o_BKMH = jnp.einsum(
        "bkms,bksh->bkmh",
        p_BKGTS.reshape(B, K, G * T, -1).astype(v_BKSH.dtype),
        v_BKSH,
        preferred_element_type=jnp.float32,
    )
    o_BTKGH = o_BKMH.reshape(B, K, G, T, H).transpose(0, 3, 1, 2, 4)
    return o_BTKGH.reshape(B, T, N, H).astype(q_BTNH.dtype)


def _attend_beam_group(q_BTNH, k_BKHX, v_BKXH, visible_BTS, rows_BSR) -> jax.Array:
    """One decoding step (T = 1) of R beams per example over keys [B, K, H, S * R] and
    values [B, K, S * R, H] that are never reordered (`add_beam_rows`): each query beam attends
    to every row of its example, and `rows_BSR` keeps, per slot, only the row that holds
    its own ancestor's token. The arithmetic of `_attend_slots`, with one matmul per
    example and key head over all its beams' slots."""
    BR, T, N, H = q_BTNH.shape
    if T != 1:
        raise ValueError(f"beam-search steps take one token per beam, got {T}")
    B, K, _, X = k_BKHX.shape
    R = BR // B
    G = N // K
    # Queries [B, Q, K, G, H] -> [B, K, G*Q, H].
    q_BKMH = q_BTNH.reshape(B, R, K, G, H).transpose(0, 2, 3, 1, 4).reshape(B, K, G * R, H)
    s_BKMX = jnp.einsum("bkmh,bkhx->bkmx", q_BKMH, k_BKHX, preferred_element_type=jnp.float32)
    s_BKGQX = (s_BKMX * (1.0 / math.sqrt(H))).reshape(B, K, G, R, X)
    # mask[b, q, (s, r)]: beam q sees slot s, and its token there sits in row r.
    mask_B11QX = (visible_BTS[:, 0, :, None] & rows_BSR).reshape(B, 1, 1, R, X)
    s_BKGQX = jnp.where(mask_B11QX, s_BKGQX, _MASK_VALUE)
    p_BKGQX = jnp.where(mask_B11QX, jax.nn.softmax(s_BKGQX, axis=-1), 0.0)
    o_BKMH = jnp.einsum(
        "bkmx,bkxh->bkmh",
        p_BKGQX.reshape(B, K, G * R, X).astype(v_BKXH.dtype),
        v_BKXH,
        preferred_element_type=jnp.float32,
    )
    o_BQKGH = o_BKMH.reshape(B, K, G, R, H).transpose(0, 3, 1, 2, 4)
    return o_BQKGH.reshape(BR, 1, N, H).astype(q_BTNH.dtype)


def _beam_step(keys, values, rows, k_BTKH, v_BTKH, i) -> None:
    """Appends one token per beam ([B * R, 1, K, H]) to its own row of the beam-search
    key cache [B, K, H, S * R] and value cache [B, K, S * R, H] (the R entries of slot
    `i`, side by side), and marks slot `i` of each beam's `BEAM_ROWS` entry as its own."""
    B = values.value.shape[0]
    BR, _, K, H = k_BTKH.shape
    R = BR // B
    k_BKHR = k_BTKH.reshape(B, R, K, H).transpose(0, 2, 3, 1)
    keys.value = _write_slots(keys.value, k_BKHR, i * R, axis=3)
    v_BKRH = v_BTKH.reshape(B, R, K, H).transpose(0, 2, 1, 3)
    values.value = _write_slots(values.value, v_BKRH, i * R, axis=2)
    rows.value = _write_slots(rows.value, _own_rows(BR, R), i, axis=1)


def _own_rows(rows: int, beam_size: int) -> jax.Array:
    """bool[rows, 1, R]: each flat row's own beam among its example's R beams."""
    own_RR = jnp.arange(rows)[:, None] % beam_size == jnp.arange(beam_size)[None, :]
    return own_RR[:, None, :]


class MultiHeadAttention(nn.Module):
    """Self- or cross-attention. In decode mode it keeps keys/values in "cache".

    Rotary positions (``position_type="rope"``) turn self-attention queries and keys
    by their positions; cross-attention is never rotated. ``q_prefix_BT`` (bool,
    causal self-attention only) marks the bidirectional prefix of a prefix-LM.

    Self-attention cache (``slot_cache=False``, the translation decoder):
    `cached_key`/`cached_value` [B, K, S_max, H] filled at the query's absolute position,
    the same for every row; a call with T new tokens writes them and attends causally by
    absolute position. Cross-attention keys and values (`cross_key`/`cross_value`) are
    cached [B, K, S, H] when the cache is created.

    Slot cache (``slot_cache=True``, decoder-only models): every call writes its T tokens
    into the next T slots of each row (`cache_index` [B]) together with their segment ids
    (`cached_segment_ids`, 0 = padding, never attended) and positions (`cached_positions`),
    so rows may hold prompts of different lengths, left- or right-padded, and each row
    keeps its own positions. A call with T = S_max creates the cache. Its keys and values
    are laid out [B, K, S_max, H], the layout the attention matmuls read.

    Cross-attention cache: the projected encoder keys/values and the source segment ids are
    stored once, when the cache is created (`EncoderDecoder.init_cache`), so decoding steps
    never touch the encoder.
    """

    config: TransformerConfig
    causal: bool = False
    is_cross: bool = False
    slot_cache: bool = False

    def _out(self, o_BTNH: jax.Array) -> jax.Array:
        cfg = self.config
        N, H = cfg.num_heads, cfg.dim_per_head
        return _proj((cfg.d_model,), ("heads", "kv", "embed"), cfg, "out", in_features=(N, H))(
            o_BTNH
        )

    @nn.compact
    def __call__(
        self,
        x_BTD: jax.Array,
        kv_BSD: jax.Array | None = None,
        *,
        q_seg_BT: jax.Array | None = None,
        kv_seg_BS: jax.Array | None = None,
        q_pos_BT: jax.Array | None = None,
        kv_pos_BS: jax.Array | None = None,
        q_prefix_BT: jax.Array | None = None,
    ) -> jax.Array:
        cfg = self.config
        N, K, H = cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
        q_BTNH = _proj((N, H), ("embed", "heads", "kv"), cfg, "query")(x_BTD)
        key_proj = _proj((K, H), ("embed", "kv_heads", "kv"), cfg, "key")
        value_proj = _proj((K, H), ("embed", "kv_heads", "kv"), cfg, "value")
        q_BTNH = nn.with_logical_constraint(q_BTNH, ("batch", "length", "heads", "kv"))

        if self.is_cross:
            if cfg.decode:
                # Filled when the cache is created (later steps pass kv_BSD=None), laid out
                # [B, K, S, H]: the layout a step's matmuls read, so no step copies it.
                k_c = self.variable("cache", "cross_key", lambda: _heads_first(key_proj(kv_BSD)))
                v_c = self.variable(
                    "cache", "cross_value", lambda: _heads_first(value_proj(kv_BSD))
                )
                seg_c = self.variable("cache", "cross_segment_ids", lambda: kv_seg_BS)
                kv_seg_BS = seg_c.value
                if self._reads_cache_layout():
                    if q_seg_BT is None:
                        q_seg_BT = jnp.ones(q_BTNH.shape[:2], jnp.int32)
                    visible_BTS = _visible(q_seg_BT, kv_seg_BS, None, None, causal=False)
                    o_BTNH = _attend_slots(q_BTNH, k_c.value, v_c.value, visible_BTS)
                    return self._out(o_BTNH)
                k_BSKH, v_BSKH = _heads_first(k_c.value), _heads_first(v_c.value)
            else:
                k_BSKH, v_BSKH = key_proj(kv_BSD), value_proj(kv_BSD)
            o_BTNH = self._attend(
                q_BTNH,
                k_BSKH,
                v_BSKH,
                q_segment_ids=q_seg_BT,
                kv_segment_ids=kv_seg_BS,
            )
            return self._out(o_BTNH)

        if q_prefix_BT is not None and not self.causal:
            raise ValueError("q_prefix_BT needs causal self-attention")
        if cfg.decode and self.has_variable("params", FUSED_QKV):
            # One matmul for all three (see `with_fused_qkv`)
            qkv_proj = _proj((N + 2 * K, H), ("embed", "heads", "kv"), cfg, FUSED_QKV)
            qkv_BTXH = qkv_proj(x_BTD)
            q_BTNH = qkv_BTXH[:, :, :N]
            k_BTKH, v_BTKH = qkv_BTXH[:, :, N : N + K], qkv_BTXH[:, :, N + K :]
            q_BTNH = nn.with_logical_constraint(q_BTNH, ("batch", "length", "heads", "kv"))
        else:
            k_BTKH, v_BTKH = key_proj(x_BTD), value_proj(x_BTD)
        if cfg.position_type == "rope":
            if q_pos_BT is None:
                B, T = x_BTD.shape[:2]
                q_pos_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
            rope = dict(theta=cfg.rope_theta, layout=cfg.position_layout)
            q_BTNH = apply_rope(q_BTNH, q_pos_BT, **rope)
            k_BTKH = apply_rope(k_BTKH, q_pos_BT, **rope)
        if cfg.decode and self.causal and self.slot_cache:
            o_BTNH = self._slot_cached_self_attention(
                q_BTNH, k_BTKH, v_BTKH, q_seg_BT, q_pos_BT, q_prefix_BT
            )
            return self._out(o_BTNH)
        if cfg.decode and self.causal:
            return self._out(self._cached_self_attention(q_BTNH, k_BTKH, v_BTKH, q_pos_BT))
        o_BTNH = self._attend(
            q_BTNH,
            k_BTKH,
            v_BTKH,
            q_segment_ids=q_seg_BT,
            kv_segment_ids=q_seg_BT,
            q_positions=q_pos_BT,
            kv_positions=q_pos_BT,
            causal=self.causal,
            q_prefix=q_prefix_BT,
            kv_prefix=q_prefix_BT,
        )
        return self._out(o_BTNH)

    def _reads_cache_layout(self) -> bool:
        """Whether a cached step attends over the [B, K, S, H] cache in place (the "xla"
        arithmetic), rather than through `dot_product_attention` on a [B, S, K, H] copy
        (another implementation, or attention weights being recorded)."""
        return self.config.attention_impl in ("auto", "xla") and not (
            self.is_mutable_collection("intermediates")
        )

    def _attend(self, q_BTNH, k_BSKH, v_BSKH, **masks) -> jax.Array:
        """The attention core; also sows the probabilities [B, N, T, S] as
        intermediates/attention_weights when the caller asks for them.

        Only on request (apply with mutable=["intermediates"]) and only with the "xla"
        reference core: other applies trace exactly `dot_product_attention`, and the
        memory-efficient kernels never have to return weights.
        """
        cfg = self.config
        if (
            cfg.attention_impl == "xla"
            and self.is_mutable_collection("intermediates")
            and not self.is_initializing()
        ):
            o_BTNH, p_BNTS = attention_with_weights(q_BTNH, k_BSKH, v_BSKH, **masks)
            self.sow("intermediates", "attention_weights", p_BNTS)
            return o_BTNH
        return dot_product_attention(
            q_BTNH, k_BSKH, v_BSKH, implementation=cfg.attention_impl, **masks
        )

    def _slot_cached_self_attention(
        self, q_BTNH, k_BTKH, v_BTKH, q_seg_BT, q_pos_BT, q_prefix_BT
    ) -> jax.Array:
        cfg = self.config
        B, T, K, H = k_BTKH.shape
        is_init = not self.has_variable("cache", "cached_key")
        # The cache is created by a call whose T is the cache length S_max.
        ck = self.variable("cache", "cached_key", jnp.zeros, (B, K, T, H), k_BTKH.dtype)
        cv = self.variable("cache", "cached_value", jnp.zeros, (B, K, T, H), v_BTKH.dtype)
        cseg = self.variable("cache", "cached_segment_ids", jnp.zeros, (B, T), jnp.int32)
        cpos = self.variable("cache", "cached_positions", jnp.zeros, (B, T), jnp.int32)
        cidx = self.variable("cache", "cache_index", jnp.zeros, (B,), jnp.int32)
        if is_init:
            return jnp.zeros_like(q_BTNH)
        if q_seg_BT is None:
            q_seg_BT = jnp.ones((B, T), jnp.int32)
        if q_pos_BT is None:
            raise ValueError("slot-cached attention needs the positions of the new tokens")
        S = ck.value.shape[2]
        # Rows advance together (one slot per token, padding included), so the index is the
        # same in every row; it is kept per row so that every cache leaf has batch first.
        # Writing past S_max would clamp (overwrite the last slots): callers size S_max.
        index_B = cidx.value
        i = index_B[0]
        cseg.value = _write_slots(cseg.value, q_seg_BT.astype(jnp.int32), i, axis=1)
        cpos.value = _write_slots(cpos.value, q_pos_BT.astype(jnp.int32), i, axis=1)
        cidx.value = index_B + T
        if self.has_variable("cache", BEAM_ROWS):  # a beam-search step (`add_beam_rows`)
            rows = self.variable("cache", BEAM_ROWS)
            _beam_step(ck, cv, rows, k_BTKH, v_BTKH, i)
            visible_BTS = _visible(
                q_seg_BT, cseg.value, q_pos_BT.astype(jnp.int32), cpos.value, causal=True
            )
            return _attend_beam_group(q_BTNH, ck.value, cv.value, visible_BTS, rows.value)
        ck.value = _write_slots(ck.value, k_BTKH.transpose(0, 2, 1, 3), i, axis=2)
        cv.value = _write_slots(cv.value, v_BTKH.transpose(0, 2, 1, 3), i, axis=2)
        if T == 1 and q_prefix_BT is None and cfg.attention_impl in ("auto", "xla"):
            # A decoding step: attend over the cache in its own layout (no copy).
            visible_BTS = _visible(
                q_seg_BT, cseg.value, q_pos_BT.astype(jnp.int32), cpos.value, causal=True
            )
            return _attend_slots(q_BTNH, ck.value, cv.value, visible_BTS)
        kv_prefix_BS = None
        if q_prefix_BT is not None:
            # Prefix keys after a prefix query can only be in this call: a prefix comes
            # whole in one call, so only this call's slots need the prefix flag.
            q_prefix_BT = q_prefix_BT.astype(jnp.bool_)
            kv_prefix_BS = _write_slots(jnp.zeros((B, S), jnp.bool_), q_prefix_BT, i, axis=1)
        return dot_product_attention(
            q_BTNH,
            ck.value.transpose(0, 2, 1, 3),
            cv.value.transpose(0, 2, 1, 3),
            q_segment_ids=q_seg_BT,
            kv_segment_ids=cseg.value,
            q_positions=q_pos_BT,
            kv_positions=cpos.value,
            causal=True,
            q_prefix=q_prefix_BT,
            kv_prefix=kv_prefix_BS,
            implementation=cfg.attention_impl,
        )

    def _cached_self_attention(self, q_BTNH, k_BTKH, v_BTKH, q_pos_BT) -> jax.Array:
        cfg = self.config
        B, T, K, H = k_BTKH.shape
        # The cache is created by a call whose T is the maximum decode length; it is laid
        # out [B, K, S, H], the layout a step's matmuls read.
        S = T
        is_init = not self.has_variable("cache", "cached_key")
        ck = self.variable("cache", "cached_key", jnp.zeros, (B, K, S, H), k_BTKH.dtype)
        cv = self.variable("cache", "cached_value", jnp.zeros, (B, K, S, H), v_BTKH.dtype)
        if is_init:
            # Creating the cache (shape pass): nothing to attend to yet.
            return jnp.zeros_like(q_BTNH)
        # Write position = absolute position of the first new token (same for every row);
        # every cache leaf keeps batch as its leading axis, so beams gather uniformly.
        i = q_pos_BT[0, 0]
        q_pos_BT = jnp.broadcast_to(i + jnp.arange(T, dtype=jnp.int32), (B, T))
        if self.has_variable("cache", BEAM_ROWS):  # a beam-search step (`add_beam_rows`)
            rows = self.variable("cache", BEAM_ROWS)
            _beam_step(ck, cv, rows, k_BTKH, v_BTKH, i)
            S = rows.value.shape[1]
            visible_BTS = jnp.arange(S)[None, None, :] <= q_pos_BT[:, :, None]
            return _attend_beam_group(q_BTNH, ck.value, cv.value, visible_BTS, rows.value)
        S = ck.value.shape[2]
        ck.value = _write_slots(ck.value, _heads_first(k_BTKH), i, axis=2)
        cv.value = _write_slots(cv.value, _heads_first(v_BTKH), i, axis=2)
        kv_pos_BS = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (B, S))
        if self._reads_cache_layout():
            visible_BTS = kv_pos_BS[:, None, :] <= q_pos_BT[:, :, None]
            return _attend_slots(q_BTNH, ck.value, cv.value, visible_BTS)
        kv_seg_BS = (kv_pos_BS < i + T).astype(jnp.int32)
        return dot_product_attention(
            q_BTNH,
            _heads_first(ck.value),
            _heads_first(cv.value),
            q_segment_ids=jnp.ones((B, T), jnp.int32),
            kv_segment_ids=kv_seg_BS,
            q_positions=q_pos_BT,
            kv_positions=kv_pos_BS,
            causal=True,
            implementation=cfg.attention_impl,
        )
