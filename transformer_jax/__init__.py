"""transformer_jax: a JAX/Flax training stack for Transformer models."""

__version__ = "0.1.0"
