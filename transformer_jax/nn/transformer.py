"""Encoder and decoder stacks, post-LN (the paper) or pre-LN.

The norm (`norm_type`), rotary positions (`position_type="rope"`) and the feed-forward
(`activation`, `mlp_bias`) follow the config. A decoder layer cross-attends to
`num_memories` memories: 0 (decoder-only LM), 1 (encoder-decoder) or several.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from transformer_jax.nn.attention import MultiHeadAttention
from transformer_jax.nn.config import TransformerConfig
from transformer_jax.nn.mlp import FeedForward
from transformer_jax.nn.norms import make_norm


class Residual(nn.Module):
    """x -> LN(x + drop(g * f(x))) (post-LN) or x + drop(g * f(LN(x))) (pre-LN); g is
    LayerScale's per-channel gain (`config.layer_scale_init` > 0), else 1."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, x_BLD: jax.Array, sublayer, *args, **kwargs) -> jax.Array:
        cfg = self.config
        norm = make_norm(cfg, "norm")
        drop = nn.Dropout(cfg.dropout_rate, deterministic=cfg.deterministic)

        def branch(h_BLD):
            y_BLD = sublayer(h_BLD, *args, **kwargs)
            if cfg.layer_scale_init:
                gain_D = self.param(
                    "layer_scale",
                    nn.with_logical_partitioning(
                        nn.initializers.constant(cfg.layer_scale_init), ("embed",)
                    ),
                    (y_BLD.shape[-1],),
                    cfg.param_dtype,
                )
                lead = (1,) * (y_BLD.ndim - 1)  # explicit broadcast over batch and length
                y_BLD = y_BLD * jnp.asarray(gain_D, y_BLD.dtype).reshape(lead + (-1,))
            return drop(y_BLD)

        if cfg.norm_position == "pre":
            return x_BLD + branch(norm(x_BLD))
        return norm(x_BLD + branch(x_BLD))


def _constrain(x_BLD: jax.Array) -> jax.Array:
    return nn.with_logical_constraint(x_BLD, ("batch", "length", "embed"))


class EncoderLayer(nn.Module):
    config: TransformerConfig

    @nn.compact
    def __call__(self, x_BLD, seg_BL, pos_BL):
        cfg = self.config
        attn = MultiHeadAttention(cfg, name="self_attention")
        x_BLD = Residual(cfg, name="attention_block")(
            x_BLD, lambda h: attn(h, q_seg_BT=seg_BL, q_pos_BT=pos_BL)
        )
        x_BLD = Residual(cfg, name="mlp_block")(x_BLD, FeedForward(cfg, name="mlp"))
        return _constrain(x_BLD)


def _memories(memories, num_memories: int, what: str) -> tuple:
    """One entry per memory: a single array (num_memories 1), a sequence, or None (cached)."""
    if memories is None:
        return (None,) * num_memories
    if num_memories == 1 and not isinstance(memories, (tuple, list)):
        return (memories,)
    memories = tuple(memories)
    if len(memories) != num_memories:
        raise ValueError(f"decoder has {num_memories} memories, got {len(memories)} {what}")
    return memories


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention to each memory, feed-forward.

    `enc_BSD`/`enc_seg_BS` are one array each (num_memories 1), sequences of
    `num_memories` arrays, or None (decoding: cross keys/values are cached). Memory 0
    uses the names `cross_attention`/`cross_block`, memory i > 0 adds `_{i}`.
    `prefix_BT` (bool) marks a prefix-LM's bidirectional prefix.
    """

    config: TransformerConfig
    num_memories: int = 1
    slot_cache: bool = False

    @nn.compact
    def __call__(self, y_BTD, enc_BSD, seg_BT, pos_BT, enc_seg_BS, prefix_BT=None):
        cfg = self.config
        self_attn = MultiHeadAttention(
            cfg, causal=True, slot_cache=self.slot_cache, name="self_attention"
        )
        y_BTD = Residual(cfg, name="attention_block")(
            y_BTD,
            lambda h: self_attn(h, q_seg_BT=seg_BT, q_pos_BT=pos_BT, q_prefix_BT=prefix_BT),
        )
        memories = _memories(enc_BSD, self.num_memories, "memories")
        memory_segs = _memories(enc_seg_BS, self.num_memories, "memory segment ids")
        for i, (mem_BSD, mem_seg_BS) in enumerate(zip(memories, memory_segs, strict=True)):
            suffix = f"_{i}" if i else ""
            cross_attn = MultiHeadAttention(cfg, is_cross=True, name=f"cross_attention{suffix}")
            y_BTD = Residual(cfg, name=f"cross_block{suffix}")(
                y_BTD,
                lambda h, a=cross_attn, m=mem_BSD, s=mem_seg_BS: a(
                    h, m, q_seg_BT=seg_BT, kv_seg_BS=s
                ),
            )
        y_BTD = Residual(cfg, name="mlp_block")(y_BTD, FeedForward(cfg, name="mlp"))
        return _constrain(y_BTD)


def _remat(cls, config: TransformerConfig):
    if config.remat == "none":
        return cls
    policy = None
    if config.remat == "dots":
        # Keep matmul outputs, recompute the cheap elementwise work in the backward pass.
        policy = jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims
    return nn.remat(cls, policy=policy, prevent_cse=not config.scan_layers)


class _ScanEncoderLayer(EncoderLayer):
    def __call__(self, x_BSD, seg_BS, pos_BS):
        return super().__call__(x_BSD, seg_BS, pos_BS), None


class _ScanDecoderLayer(DecoderLayer):
    def __call__(self, y_BTD, enc_BSD, seg_BT, pos_BT, enc_seg_BS, prefix_BT=None):
        return super().__call__(y_BTD, enc_BSD, seg_BT, pos_BT, enc_seg_BS, prefix_BT), None


def _scanned(cls, config: TransformerConfig, length: int, num_args: int):
    """One layer body under `nn.scan`: parameters stacked on a leading "layers" axis.

    Compile time stays flat in depth; the cache (decoding) is stacked the same way.
    """
    return nn.scan(
        _remat(cls, config),
        variable_axes={"params": 0, "cache": 1},  # cache keeps batch first
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast,) * num_args,
        length=length,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )


class Encoder(nn.Module):
    """Embedded source [B, S, D] -> encoded [B, S, D]."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, x_BSD, seg_BS, pos_BS):
        cfg = self.config
        if cfg.scan_layers and cfg.num_encoder_layers:
            stack = _scanned(_ScanEncoderLayer, cfg, cfg.num_encoder_layers, 2)
            x_BSD, _ = stack(cfg, name="layers")(x_BSD, seg_BS, pos_BS)
        else:
            layer_cls = _remat(EncoderLayer, cfg)
            for i in range(cfg.num_encoder_layers):
                x_BSD = layer_cls(cfg, name=f"layer_{i}")(x_BSD, seg_BS, pos_BS)
        if cfg.norm_position == "pre":
            x_BSD = make_norm(cfg, "final_norm")(x_BSD)
        return x_BSD


class Decoder(nn.Module):
    """Embedded target [B, T, D] + encoded memories -> hidden [B, T, D].

    `num_memories=0` is a decoder-only stack (pass `enc_BSD=enc_seg_BS=None`);
    `slot_cache` selects the per-row slot cache for decoding (see MultiHeadAttention).
    """

    config: TransformerConfig
    num_memories: int = 1
    slot_cache: bool = False

    @nn.compact
    def __call__(self, y_BTD, enc_BSD, seg_BT, pos_BT, enc_seg_BS, prefix_BT=None):
        cfg = self.config
        extra = dict(num_memories=self.num_memories, slot_cache=self.slot_cache)
        # The prefix mask is passed only when given, so that callers without one keep
        # exactly the layer calls (and scanned argument lists) they had before.
        prefix = () if prefix_BT is None else (prefix_BT,)
        if cfg.scan_layers and cfg.num_decoder_layers:
            stack = _scanned(_ScanDecoderLayer, cfg, cfg.num_decoder_layers, 4 + len(prefix))
            y_BTD, _ = stack(cfg, name="layers", **extra)(
                y_BTD, enc_BSD, seg_BT, pos_BT, enc_seg_BS, *prefix
            )
        else:
            layer_cls = _remat(DecoderLayer, cfg)
            for i in range(cfg.num_decoder_layers):
                y_BTD = layer_cls(cfg, name=f"layer_{i}", **extra)(
                    y_BTD, enc_BSD, seg_BT, pos_BT, enc_seg_BS, *prefix
                )
        if cfg.norm_position == "pre":
            y_BTD = make_norm(cfg, "final_norm")(y_BTD)
        return y_BTD


def segments_from_ids(ids_BL: jax.Array, pad_id: int) -> jax.Array:
    return (ids_BL != pad_id).astype(jnp.int32)


def default_positions(ids_BL: jax.Array) -> jax.Array:
    B, L = ids_BL.shape
    return jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
