"""The position-wise feed-forward sublayer: FFN(x) = act(x W1 + b1) W2 + b2."""

from __future__ import annotations

import flax.linen as nn
import jax

from transformer_jax.nn.config import TransformerConfig

_ACT = {
    "relu": nn.relu,
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
    "swish": nn.swish,
    "silu": nn.silu,
}


def dense(features: int, axes: tuple[str, str], config: TransformerConfig, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)),
        name=name,
    )


class FeedForward(nn.Module):
    config: TransformerConfig

    @nn.compact
    def __call__(self, x_BLD: jax.Array) -> jax.Array:
        cfg = self.config
        h_BLF = dense(cfg.d_ff, ("embed", "mlp"), cfg, "wi")(x_BLD)
        h_BLF = _ACT[cfg.activation](h_BLF)
        h_BLF = nn.with_logical_constraint(h_BLF, ("batch", "length", "mlp"))
        return dense(cfg.d_model, ("mlp", "embed"), cfg, "wo")(h_BLF)
