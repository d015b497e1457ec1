"""Token embeddings (shareable, tied to the output projection) and sinusoidal positions."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from transformer_jax.nn.config import TransformerConfig


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


class Embed(nn.Module):
    """A [vocab, d_model] table; `attend` gives the tied pre-softmax logits."""

    num_embeddings: int
    config: TransformerConfig

    def setup(self) -> None:
        cfg = self.config
        init = nn.initializers.normal(stddev=cfg.d_model**-0.5)
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(init, ("vocab", "embed")),
            (self.num_embeddings, cfg.d_model),
            cfg.param_dtype,
        )

    def __call__(self, ids_BL: jax.Array) -> jax.Array:
        table_VD = jnp.asarray(self.embedding, self.config.dtype)
        return jnp.take(table_VD, ids_BL, axis=0)

    def attend(self, x_BLD: jax.Array) -> jax.Array:
        table_VD = jnp.asarray(self.embedding, self.config.dtype)
        return jnp.einsum("bld,vd->blv", x_BLD, table_VD)


def add_positions(x_BLD: jax.Array, pos_BL: jax.Array, config: TransformerConfig) -> jax.Array:
    """Adds the fixed sinusoidal encoding at the given positions."""
    table_PD = jnp.asarray(
        sinusoid_table(config.max_position, config.d_model, config.position_layout), config.dtype
    )
    return x_BLD + jnp.take(table_PD, pos_BL, axis=0, mode="clip")
