"""Positions: fixed sinusoids, learned absolute embeddings and rotary embeddings (RoPE)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from transformer_jax.nn.config import POSITION_LAYOUTS, TransformerConfig

__all__ = [
    "AddPositions",
    "LearnedPositions",
    "apply_rope",
    "rope_inverse_frequencies",
    "sinusoid_table",
]


def sinusoid_table(max_len: int, dim: int, layout: str = "interleaved") -> np.ndarray:
    """Positions 0..max_len-1 encoded as in Vaswani et al. (2017), section 3.5.

    PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)).
    "interleaved" puts sin and cos in alternating columns, as the paper's formula
    reads; "halves" puts all sines first, then all cosines (Marian, tensor2tensor).
    """
    half = dim // 2
    pos_L1 = np.arange(max_len, dtype=np.float64)[:, None]
    inv_freq_1F = np.power(10000.0, -2.0 * np.arange(half, dtype=np.float64) / dim)[None, :]
    angle_LF = pos_L1 * inv_freq_1F
    table_LD = np.zeros((max_len, dim), dtype=np.float64)
    if layout == "interleaved":
        table_LD[:, 0 : 2 * half : 2] = np.sin(angle_LF)
        table_LD[:, 1 : 2 * half : 2] = np.cos(angle_LF)
    elif layout == "halves":
        table_LD[:, :half] = np.sin(angle_LF)
        table_LD[:, half : 2 * half] = np.cos(angle_LF)
    else:
        raise ValueError(f"unknown position layout {layout!r}")
    return table_LD.astype(np.float32)


class LearnedPositions(nn.Module):
    """A learned ``[max_position, d_model]`` table of absolute positions (BERT, GPT-2)."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, pos_BL: jax.Array) -> jax.Array:
        cfg = self.config
        table_PD = self.param(
            "embedding",
            nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), (None, "embed")),
            (cfg.max_position, cfg.d_model),
            cfg.param_dtype,
        )
        # Positions past the table read its last row, like the sinusoid table.
        return jnp.take(jnp.asarray(table_PD, cfg.dtype), pos_BL, axis=0, mode="clip")


class AddPositions(nn.Module):
    """``x + position embedding`` for ``config.position_type``; "rope" and "none" add nothing.

    Rotary positions act on queries and keys instead: see ``apply_rope``.
    """

    config: TransformerConfig

    @nn.compact
    def __call__(self, x_BLD: jax.Array, pos_BL: jax.Array) -> jax.Array:
        cfg = self.config
        if cfg.position_type == "sinusoid":
            table = sinusoid_table(cfg.max_position, cfg.d_model, cfg.position_layout)
            table_PD = jnp.asarray(table, cfg.dtype)
            return x_BLD + jnp.take(table_PD, pos_BL, axis=0, mode="clip")
        if cfg.position_type == "learned":
            return x_BLD + LearnedPositions(cfg, name="positions")(pos_BL)
        return x_BLD


def rope_inverse_frequencies(head_dim: int, theta: float = 10000.0) -> np.ndarray:
    """``theta^(-2i/head_dim)`` for ``i < head_dim / 2``, in float64 (Su et al. 2021)."""
    return np.power(float(theta), -np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)


def apply_rope(
    x_BLNH: jax.Array,
    pos_BL: jax.Array,
    *,
    theta: float = 10000.0,
    layout: str = "halves",
) -> jax.Array:
    """Rotates query or key vectors ``[B, L, N, H]`` by their positions ``[B, L]``.

    Feature pair ``i`` turns by the angle ``pos * theta^(-2i/H)``. "halves" pairs
    feature ``i`` with ``i + H/2`` (rotate-half: Llama, GPT-NeoX); "interleaved"
    pairs ``2i`` with ``2i + 1`` (GPT-J, the RoFormer paper). Angles and products
    are float32; the result has the dtype of ``x_BLNH``.
    """
    if layout not in POSITION_LAYOUTS:
        raise ValueError(f"unknown rotary layout {layout!r}; choose one of {POSITION_LAYOUTS}")
    if x_BLNH.ndim != 4 or x_BLNH.shape[-1] % 2:
        raise ValueError(f"apply_rope needs [B, L, N, H] with even H, got shape {x_BLNH.shape}")
    if pos_BL.shape != x_BLNH.shape[:2]:
        raise ValueError(f"positions {pos_BL.shape} must be [B, L] = {x_BLNH.shape[:2]}")
    H = x_BLNH.shape[-1]
    inv_freq_F = jnp.asarray(rope_inverse_frequencies(H, theta), jnp.float32)
    angle_BL1F = (pos_BL.astype(jnp.float32)[:, :, None] * inv_freq_F[None, None, :])[:, :, None]
    cos_BL1F, sin_BL1F = jnp.cos(angle_BL1F), jnp.sin(angle_BL1F)
    x = x_BLNH.astype(jnp.float32)
    if layout == "halves":
        x1_BLNF, x2_BLNF = x[..., : H // 2], x[..., H // 2 :]
    else:
        x1_BLNF, x2_BLNF = x[..., 0::2], x[..., 1::2]
    y1_BLNF = x1_BLNF * cos_BL1F - x2_BLNF * sin_BL1F
    y2_BLNF = x2_BLNF * cos_BL1F + x1_BLNF * sin_BL1F
    if layout == "halves":
        y_BLNH = jnp.concatenate([y1_BLNF, y2_BLNF], axis=-1)
    else:
        y_BLNH = jnp.stack([y1_BLNF, y2_BLNF], axis=-1).reshape(x.shape)
    return y_BLNH.astype(x_BLNH.dtype)
