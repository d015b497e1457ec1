"""The position-wise feed-forward sublayer: FFN(x) = act(x W1 + b1) W2 + b2.

Gated variants (Shazeer 2020, "GLU Variants Improve Transformer"), chosen by
``activation`` "swiglu", "geglu" or "geglu_tanh": FFN(x) = (act(x W0) * x W1) W2,
with kernels ``wi_0`` (gate, as Llama's gate_proj) and ``wi_1`` (as up_proj).
"""

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
# Gated activation -> the activation applied to the gate branch.
_GATED = {"swiglu": "silu", "geglu": "gelu", "geglu_tanh": "gelu_tanh"}


def activation_fn(name: str):
    """The elementwise function of `TransformerConfig.activation` (a gated one's gate
    function), e.g. for a head that follows the stack's choice."""
    return _ACT[_GATED.get(name, name)]


def dense(
    features: int,
    axes: tuple[str, str],
    config: TransformerConfig,
    name: str,
    use_bias: bool = True,
) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=use_bias,
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
        if cfg.activation in _GATED:
            gate_BLF = dense(cfg.d_ff, ("embed", "mlp"), cfg, "wi_0", cfg.mlp_bias)(x_BLD)
            up_BLF = dense(cfg.d_ff, ("embed", "mlp"), cfg, "wi_1", cfg.mlp_bias)(x_BLD)
            h_BLF = _ACT[_GATED[cfg.activation]](gate_BLF) * up_BLF
        else:
            h_BLF = dense(cfg.d_ff, ("embed", "mlp"), cfg, "wi", cfg.mlp_bias)(x_BLD)
            h_BLF = _ACT[cfg.activation](h_BLF)
        h_BLF = nn.with_logical_constraint(h_BLF, ("batch", "length", "mlp"))
        return dense(cfg.d_model, ("mlp", "embed"), cfg, "wo", cfg.mlp_bias)(h_BLF)
