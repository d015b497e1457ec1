"""Normalisation layers: LayerNorm (the paper) and RMSNorm (T5, Llama), chosen by config."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from transformer_jax.nn.config import TransformerConfig

__all__ = ["RMSNorm", "layer_norm", "make_norm"]


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * scale`` (Zhang & Sennrich 2019): no centring, no bias.

    Statistics and the scaling run in float32; the result has the compute dtype.
    """

    config: TransformerConfig

    @nn.compact
    def __call__(self, x_BLD: jax.Array) -> jax.Array:
        cfg = self.config
        scale_D = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
            (x_BLD.shape[-1],),
            cfg.param_dtype,
        )
        x = x_BLD.astype(jnp.float32)
        mean_square = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
        y = x * jax.lax.rsqrt(mean_square + cfg.layer_norm_eps)
        # Explicit leading axes: the scale broadcasts over every axis but the last.
        scale = jnp.asarray(scale_D, jnp.float32).reshape((1,) * (x.ndim - 1) + scale_D.shape)
        return (y * scale).astype(cfg.dtype)


def layer_norm(config: TransformerConfig, name: str) -> nn.LayerNorm:
    """LayerNorm with a scale and a bias; Flax computes its statistics in float32."""
    return nn.LayerNorm(
        epsilon=config.layer_norm_eps,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        name=name,
    )


def make_norm(config: TransformerConfig, name: str) -> nn.Module:
    """The norm ``config.norm_type`` names: "layer" or "rms"."""
    if config.norm_type == "rms":
        return RMSNorm(config, name=name)
    return layer_norm(config, name)
